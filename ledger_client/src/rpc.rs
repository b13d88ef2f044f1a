//! A ledger client over CometBFT's RPC: submit transactions and wait for
//! their commit, and read state as one node reports it. Reads a user acts
//! on go through [`crate::verified::VerifiedLedger`] instead.

use std::time::Duration;

use borsh::BorshDeserialize;
use pyrsia_chain::{PublicKey, SignedTx};
use tendermint::Hash;
use tendermint_rpc::client::CompatMode;
use tendermint_rpc::{Client, HttpClient};

/// What went wrong in an RPC call, with the node's own message when it sent
/// one (tendermint-rpc's `Display` carries a captured trace instead).
pub(crate) fn rpc_reason(e: &tendermint_rpc::Error) -> String {
    match e.detail() {
        tendermint_rpc::error::ErrorDetail::Response(r) => {
            format!("the node answered: {}", r.source)
        }
        other => other.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("node RPC {url}: {reason}")]
    Rpc { url: String, reason: String },
    #[error("rejected (code {code}): {log}")]
    Rejected { code: u32, log: String },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("query {path:?} failed: {log}")]
    Query { path: String, log: String },
    #[error("value at {path:?} does not decode: {reason}")]
    Decode { path: String, reason: String },
}

/// A transaction as committed in a block.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommittedTx {
    pub hash: String,
    pub height: u64,
    pub code: u32,
    pub log: String,
    pub events: Vec<(String, Vec<(String, String)>)>,
}

/// A transaction as a block holds it, with its result.
#[derive(Clone, Debug)]
pub struct BlockTx {
    pub bytes: Vec<u8>,
    pub code: u32,
    pub log: String,
}

impl CommittedTx {
    /// The first value of `attribute` in the first event of `kind`.
    pub fn attribute(&self, kind: &str, attribute: &str) -> Option<&str> {
        self.events
            .iter()
            .filter(|(k, _)| k == kind)
            .flat_map(|(_, attrs)| attrs.iter())
            .find(|(k, _)| k == attribute)
            .map(|(_, v)| v.as_str())
    }
}

/// One event a block emitted, as builders and clients follow them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LedgerEvent {
    pub height: u64,
    pub kind: String,
    pub attributes: Vec<(String, String)>,
}

impl LedgerEvent {
    fn from_abci(height: u64, e: tendermint::abci::Event) -> LedgerEvent {
        LedgerEvent {
            height,
            attributes: e
                .attributes
                .iter()
                .map(|a| {
                    (
                        a.key_str().unwrap_or_default().to_owned(),
                        a.value_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
            kind: e.kind,
        }
    }

    /// The first value of `attribute`.
    pub fn attribute(&self, attribute: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == attribute)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct LedgerClient {
    url: String,
    http: HttpClient,
}

impl LedgerClient {
    pub fn new(url: &str) -> Result<LedgerClient, ClientError> {
        let rpc = |reason: String| ClientError::Rpc {
            url: url.to_owned(),
            reason,
        };
        let parsed = url
            .parse()
            .map_err(|e: tendermint_rpc::Error| rpc(e.to_string()))?;
        let http = HttpClient::builder(parsed)
            .compat_mode(CompatMode::V0_38)
            .build()
            .map_err(|e| rpc(e.detail().to_string()))?;
        Ok(LedgerClient {
            url: url.to_owned(),
            http,
        })
    }

    fn rpc_err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Rpc {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// tendermint-rpc's `Display` carries a captured trace; its detail does not.
    fn call_err(&self, e: tendermint_rpc::Error) -> ClientError {
        self.rpc_err(rpc_reason(&e))
    }

    /// The app hash this node's ledger returned when it executed block `height`.
    pub async fn block_app_hash(&self, height: u64) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .block_results(height)
            .await?
            .app_hash
            .as_bytes()
            .to_vec())
    }

    async fn block_results(
        &self,
        height: u64,
    ) -> Result<tendermint_rpc::endpoint::block_results::Response, ClientError> {
        let h: tendermint::block::Height = height.try_into().map_err(|e| self.rpc_err(e))?;
        self.http
            .block_results(h)
            .await
            .map_err(|e| self.call_err(e))
    }

    async fn block(&self, height: u64) -> Result<tendermint::Block, ClientError> {
        let h: tendermint::block::Height = height.try_into().map_err(|e| self.rpc_err(e))?;
        let response = self.http.block(h).await.map_err(|e| self.call_err(e))?;
        Ok(response.block)
    }

    /// The events of the transactions that succeeded in block `height`, in
    /// block order, followed by the block's own events.
    pub async fn block_events(&self, height: u64) -> Result<Vec<LedgerEvent>, ClientError> {
        let results = self.block_results(height).await?;
        let tx_events = results
            .txs_results
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.code.is_ok())
            .flat_map(|r| r.events);
        Ok(tx_events
            .chain(results.finalize_block_events)
            .map(|e| LedgerEvent::from_abci(height, e))
            .collect())
    }

    /// The events of the newest committed transactions that carry
    /// `kind.attribute`, newest first: at most `limit` transactions, found
    /// through the node's transaction index. An index is only a pointer to
    /// what to read with proofs, never an answer.
    pub async fn recent_events(
        &self,
        kind: &str,
        attribute: &str,
        limit: u8,
    ) -> Result<Vec<LedgerEvent>, ClientError> {
        let query: tendermint_rpc::query::Query = format!("{kind}.{attribute} EXISTS")
            .parse()
            .map_err(|e| self.rpc_err(e))?;
        let found = self
            .http
            .tx_search(query, false, 1, limit, tendermint_rpc::Order::Descending)
            .await
            .map_err(|e| self.call_err(e))?;
        Ok(found
            .txs
            .into_iter()
            .filter(|t| t.tx_result.code.is_ok())
            .flat_map(|t| {
                let height = t.height.value();
                t.tx_result
                    .events
                    .into_iter()
                    .map(move |e| LedgerEvent::from_abci(height, e))
            })
            .collect())
    }

    /// The URL of this node's event websocket.
    pub fn websocket_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let base = base
            .strip_prefix("https://")
            .map(|rest| format!("wss://{rest}"))
            .or_else(|| {
                base.strip_prefix("http://")
                    .map(|rest| format!("ws://{rest}"))
            })
            .unwrap_or_else(|| base.to_owned());
        format!("{base}/websocket")
    }

    /// The time in block `height`'s header, in seconds since the epoch.
    pub async fn block_time(&self, height: u64) -> Result<f64, ClientError> {
        let t = self.block(height).await?.header.time.unix_timestamp_nanos();
        Ok(t as f64 / 1e9)
    }

    /// How many transactions block `height` holds, not counting its
    /// proposer's beacon.
    pub async fn block_tx_count(&self, height: u64) -> Result<usize, ClientError> {
        let block = self.block(height).await?;
        Ok(block
            .data
            .iter()
            .filter(|tx| !pyrsia_chain::beacon::is_beacon_tx(tx))
            .count())
    }

    /// Block `height`'s transactions with their results, in block order, not
    /// counting its proposer's beacon.
    pub async fn block_txs(&self, height: u64) -> Result<Vec<BlockTx>, ClientError> {
        let block = self.block(height).await?;
        let results = self
            .block_results(height)
            .await?
            .txs_results
            .unwrap_or_default();
        if results.len() != block.data.len() {
            return Err(self.rpc_err(format!(
                "block {height} holds {} transactions but {} results",
                block.data.len(),
                results.len()
            )));
        }
        Ok(block
            .data
            .into_iter()
            .zip(results)
            .filter(|(tx, _)| !pyrsia_chain::beacon::is_beacon_tx(tx))
            .map(|(bytes, r)| BlockTx {
                bytes,
                code: r.code.value(),
                log: r.log,
            })
            .collect())
    }

    /// The chain id, as the node reports it.
    pub async fn chain_id(&self) -> Result<String, ClientError> {
        let status = self.http.status().await.map_err(|e| self.call_err(e))?;
        Ok(status.node_info.network.to_string())
    }

    pub async fn latest_height(&self) -> Result<u64, ClientError> {
        let status = self.http.status().await.map_err(|e| self.call_err(e))?;
        Ok(status.sync_info.latest_block_height.value())
    }

    pub async fn wait_height(&self, height: u64, timeout: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(h) = self.latest_height().await {
                if h >= height {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout(timeout, format!("height {height}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Raw state bytes at `path` (height 0 = latest).
    pub async fn query_raw(
        &self,
        path: &str,
        height: u64,
    ) -> Result<(u64, Option<Vec<u8>>), ClientError> {
        let answer = self.abci(path, height, false).await?;
        let value = (answer.log == "exists").then_some(answer.value);
        Ok((answer.height.value(), value))
    }

    async fn abci(
        &self,
        path: &str,
        height: u64,
        prove: bool,
    ) -> Result<tendermint_rpc::endpoint::abci_query::AbciQuery, ClientError> {
        let height = match height {
            0 => None,
            h => Some(h.try_into().map_err(|e| self.rpc_err(e))?),
        };
        let answer = self
            .http
            .abci_query(Some(path.to_owned()), Vec::new(), height, prove)
            .await
            .map_err(|e| self.call_err(e))?;
        if answer.code.is_err() {
            return Err(ClientError::Query {
                path: path.to_owned(),
                log: answer.log,
            });
        }
        Ok(answer)
    }

    pub async fn query_value<T: BorshDeserialize>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ClientError> {
        let (_, raw) = self.query_raw(path, 0).await?;
        raw.map(|bytes| {
            T::try_from_slice(&bytes).map_err(|e| ClientError::Decode {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// The node's answer for `key` at `height`, with its proof, unchecked:
    /// [`crate::verified::VerifiedLedger`] checks it.
    pub async fn abci_query_proved(
        &self,
        key: &str,
        height: u64,
    ) -> Result<tendermint_rpc::endpoint::abci_query::AbciQuery, ClientError> {
        self.abci(key, height, true).await
    }

    pub async fn next_nonce(&self, signer: &PublicKey) -> Result<u64, ClientError> {
        let last: Option<u64> = self.query_value(&format!("nonce/{signer}")).await?;
        Ok(last.unwrap_or(0) + 1)
    }

    /// Sends a transaction to the mempool; fails with the CheckTx reason if refused.
    pub async fn broadcast(&self, tx: &SignedTx) -> Result<Hash, ClientError> {
        let bytes = borsh::to_vec(tx).map_err(|e| self.rpc_err(e))?;
        self.broadcast_bytes(bytes).await
    }

    pub async fn broadcast_bytes(&self, bytes: Vec<u8>) -> Result<Hash, ClientError> {
        let r = self
            .http
            .broadcast_tx_sync(bytes)
            .await
            .map_err(|e| self.call_err(e))?;
        if r.code.is_err() {
            return Err(ClientError::Rejected {
                code: r.code.value(),
                log: r.log,
            });
        }
        Ok(r.hash)
    }

    /// Waits until the transaction is in a block and returns its result.
    pub async fn wait_tx(&self, hash: Hash, timeout: Duration) -> Result<CommittedTx, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.tx(hash, false).await {
                let result = r.tx_result;
                return Ok(CommittedTx {
                    hash: hash.to_string(),
                    height: r.height.value(),
                    code: result.code.value(),
                    log: result.log,
                    events: result
                        .events
                        .into_iter()
                        .map(|e| {
                            let attrs = e
                                .attributes
                                .iter()
                                .map(|a| {
                                    (
                                        a.key_str().unwrap_or_default().to_owned(),
                                        a.value_str().unwrap_or_default().to_owned(),
                                    )
                                })
                                .collect();
                            (e.kind, attrs)
                        })
                        .collect(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout(timeout, format!("transaction {hash}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Broadcasts and waits for the commit; a rule failure in the block is an error too.
    pub async fn submit(&self, tx: &SignedTx) -> Result<CommittedTx, ClientError> {
        let hash = self.broadcast(tx).await?;
        let committed = self.wait_tx(hash, Duration::from_secs(60)).await?;
        if committed.code != 0 {
            return Err(ClientError::Rejected {
                code: committed.code,
                log: committed.log,
            });
        }
        Ok(committed)
    }
}
