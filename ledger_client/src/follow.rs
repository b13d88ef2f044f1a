//! Follows the ledger block by block.
//!
//! A websocket subscription to `NewBlock` says *when* to look; the events
//! themselves are read per height from `block_results`. So a restart or a
//! dropped connection only means resuming at the next unread height: nothing
//! is missed, whether or not the push channel was up.

use std::time::Duration;

use futures::StreamExt;
use tendermint_rpc::client::CompatMode;
use tendermint_rpc::query::EventType;
use tendermint_rpc::{Subscription, SubscriptionClient, WebSocketClient};

use crate::rpc::{ClientError, LedgerClient, LedgerEvent};

/// How long to wait for a push before asking the node anyway.
const POLL_FALLBACK: Duration = Duration::from_secs(2);

struct Push {
    client: Option<WebSocketClient>,
    subscription: Subscription,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Push {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close();
        }
        self.driver.abort();
    }
}

pub struct Follower {
    ledger: LedgerClient,
    next_height: u64,
    latest_seen: u64,
    push: Option<Push>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("next_height", &self.next_height)
            .field("push", &self.push.is_some())
            .finish()
    }
}

impl Follower {
    /// Starts reading at `next_height` (at least 1).
    pub fn new(ledger: LedgerClient, next_height: u64) -> Follower {
        Follower {
            ledger,
            next_height: next_height.max(1),
            latest_seen: 0,
            push: None,
        }
    }

    /// The first height not yet returned.
    pub fn next_height(&self) -> u64 {
        self.next_height
    }

    /// The events of the next block, waiting until it is committed.
    pub async fn next_block(&mut self) -> Result<(u64, Vec<LedgerEvent>), ClientError> {
        loop {
            if self.latest_seen < self.next_height {
                match self.ledger.latest_height().await {
                    Ok(h) => self.latest_seen = h,
                    Err(e) => tracing::debug!("ledger not reachable: {e}"),
                }
            }
            if self.latest_seen >= self.next_height {
                let height = self.next_height;
                let events = self.ledger.block_events(height).await?;
                self.next_height += 1;
                return Ok((height, events));
            }
            self.wait_for_push().await;
        }
    }

    async fn wait_for_push(&mut self) {
        if self.push.is_none() {
            match self.subscribe().await {
                Ok(push) => self.push = Some(push),
                Err(e) => {
                    tracing::debug!("no event websocket ({e}); polling");
                    tokio::time::sleep(POLL_FALLBACK).await;
                    return;
                }
            }
        }
        let Some(push) = self.push.as_mut() else {
            return;
        };
        match tokio::time::timeout(POLL_FALLBACK, push.subscription.next()).await {
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(Some(Err(e))) => {
                tracing::warn!("event websocket failed: {e}; reconnecting");
                self.drop_push();
            }
            Ok(None) => {
                tracing::warn!("event websocket closed; reconnecting");
                self.drop_push();
            }
        }
    }

    fn drop_push(&mut self) {
        self.push = None;
    }

    async fn subscribe(&self) -> Result<Push, tendermint_rpc::Error> {
        let url = self.ledger.websocket_url().parse()?;
        let (client, driver) = WebSocketClient::builder(url)
            .compat_mode(CompatMode::V0_38)
            .build()
            .await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = driver.run().await {
                tracing::debug!("event websocket driver ended: {e}");
            }
        });
        let subscription = client.subscribe(EventType::NewBlock.into()).await?;
        Ok(Push {
            client: Some(client),
            subscription,
            driver,
        })
    }
}
