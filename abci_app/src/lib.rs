//! The Pyrsia ABCI 2.0 application: binds [`pyrsia_chain::Ledger`] to CometBFT.
//!
//! CometBFT opens four connections (consensus, mempool, info, snapshot). The
//! consensus, mempool and snapshot ones feed one [`App`] through
//! `tower_abci::v038::split`, so those requests are handled one at a time by
//! the single owner of the ledger, in arrival order. The info connection
//! (Info, Query) is served by [`Queries`] from the committed versions only,
//! on blocking threads, so a large proved query never delays FinalizeBlock.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use pyrsia_chain::beacon::{is_beacon_tx, BeaconKey};
use pyrsia_chain::ledger::BlockInfo;
use pyrsia_chain::proof::{encode_proof, PROOF_OP_TYPE};
use pyrsia_chain::{GenesisState, Ledger, LedgerReader, ValidatorUpdate};
use tendermint::abci::types::ExecTxResult;
use tendermint::abci::{response, Code, Event, EventAttributeIndexExt};
use tendermint::merkle::proof::{ProofOp, ProofOps};
use tendermint::v0_38::abci::{request, InfoRequest, InfoResponse, Request, Response};
use tendermint::{validator, AppHash};
use tower::Service;
use tower_abci::v038::{split, Server};
use tower_abci::BoxError;

#[derive(Debug, thiserror::Error)]
pub enum AbciError {
    #[error("ABCI server: {0}")]
    Server(String),
}

/// Version string reported to CometBFT in Info.
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug)]
pub struct App {
    ledger: Ledger,
    proposer: Option<Proposer>,
}

/// What this validator proposes with: its CometBFT address and beacon key.
#[derive(Debug)]
pub struct Proposer {
    pub address: Vec<u8>,
    pub key: BeaconKey,
}

type Reply = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send + 'static>>;

fn app_hash(bytes: &[u8]) -> AppHash {
    AppHash::try_from(bytes.to_vec()).unwrap_or_default()
}

/// A ledger validator update as CometBFT takes it. The ledger has checked
/// the key and bounded the power, so a failure here is a broken invariant.
fn validator_update(u: &ValidatorUpdate) -> Result<validator::Update, BoxError> {
    let pub_key = tendermint::PublicKey::from_raw_ed25519(&u.pub_key.0)
        .ok_or_else(|| format!("validator key {} is not ed25519", u.pub_key))?;
    let power = tendermint::vote::Power::try_from(u.power)
        .map_err(|e| format!("validator power {}: {e}", u.power))?;
    Ok(validator::Update { pub_key, power })
}

fn to_events(events: Vec<pyrsia_chain::Event>) -> Vec<Event> {
    events
        .into_iter()
        .map(|e| {
            Event::new(
                e.kind,
                e.attributes
                    .into_iter()
                    .map(|(k, v)| (k, v).index())
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

impl App {
    pub fn new(ledger: Ledger, proposer: Option<Proposer>) -> App {
        App { ledger, proposer }
    }

    /// The mempool's transactions in an order that applies (see
    /// [`Ledger::order_proposal`]) within the byte budget, after this
    /// proposer's beacon when the chain has beacon keys.
    fn prepare_proposal(
        &self,
        r: request::PrepareProposal,
    ) -> Result<response::PrepareProposal, BoxError> {
        let mut budget = usize::try_from(r.max_tx_bytes).unwrap_or(0);
        let mut txs = Vec::new();
        let ours = self
            .proposer
            .as_ref()
            .filter(|p| p.address.as_slice() == r.proposer_address.as_bytes());
        if let Some(p) = ours {
            if let Some(beacon) = self.ledger.beacon_tx(&p.key, r.height.value())? {
                budget = budget.saturating_sub(beacon.len());
                txs.push(Bytes::from(beacon));
            }
        }
        let candidates = r.txs.into_iter().filter(|tx| !is_beacon_tx(tx)).collect();
        txs.extend(
            self.ledger
                .order_proposal(candidates)?
                .into_iter()
                .take_while(|tx| match budget.checked_sub(tx.len()) {
                    Some(rest) => {
                        budget = rest;
                        true
                    }
                    None => false,
                }),
        );
        Ok(response::PrepareProposal { txs })
    }

    fn process_proposal(&self, r: request::ProcessProposal) -> response::ProcessProposal {
        match self
            .ledger
            .check_proposal(&r.txs, r.proposer_address.as_bytes(), r.height.value())
        {
            Ok(()) => response::ProcessProposal::Accept,
            Err(e) => {
                tracing::warn!(height = r.height.value(), error = %e, "proposal rejected");
                response::ProcessProposal::Reject
            }
        }
    }

    fn init_chain(&mut self, req: request::InitChain) -> Result<response::InitChain, BoxError> {
        let genesis: GenesisState = serde_json::from_slice(&req.app_state_bytes)
            .map_err(|e| format!("genesis app_state is not a Pyrsia genesis state: {e}"))?;
        let validators = req
            .validators
            .iter()
            .map(|v| match v.pub_key.ed25519() {
                Some(key) => {
                    let mut bytes = [0u8; 32];
                    bytes.copy_from_slice(key.as_bytes());
                    Ok((pyrsia_chain::PublicKey(bytes), v.power.value()))
                }
                None => Err(format!(
                    "genesis validator key {:?} is not ed25519, the only kind Pyrsia governs",
                    v.pub_key
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hash = self.ledger.init_chain_with_validators(
            &req.chain_id,
            &genesis,
            req.initial_height.value(),
            &validators,
        )?;
        tracing::info!(chain_id = %req.chain_id, app_hash = %hex::encode(hash), "chain initialised");
        Ok(response::InitChain {
            consensus_params: None,
            validators: Vec::new(),
            app_hash: app_hash(&hash),
        })
    }

    fn check_tx(&mut self, req: request::CheckTx) -> response::CheckTx {
        let recheck = req.kind == request::CheckTxKind::Recheck;
        let result = self.ledger.check_tx(&req.tx, recheck);
        response::CheckTx {
            code: Code::from(result.code),
            log: result.log,
            ..Default::default()
        }
    }

    fn finalize_block(
        &mut self,
        req: request::FinalizeBlock,
    ) -> Result<response::FinalizeBlock, BoxError> {
        let block = BlockInfo {
            height: req.height.value(),
            time: u64::try_from(req.time.unix_timestamp()).unwrap_or(0),
            hash: req.hash.as_bytes().to_vec(),
            proposer: req.proposer_address.as_bytes().to_vec(),
        };
        let result = self.ledger.finalize_block(&block, &req.txs)?;
        tracing::debug!(height = block.height, txs = req.txs.len(), app_hash = %hex::encode(result.app_hash), "finalized");
        let validator_updates = result
            .validator_updates
            .iter()
            .map(validator_update)
            .collect::<Result<Vec<_>, _>>()?;
        for u in &result.validator_updates {
            tracing::info!(height = block.height, pub_key = %u.pub_key, power = u.power, "validator update");
        }
        Ok(response::FinalizeBlock {
            events: to_events(result.events),
            tx_results: result
                .txs
                .into_iter()
                .map(|r| ExecTxResult {
                    code: Code::from(r.code),
                    log: r.log,
                    events: to_events(r.events),
                    ..Default::default()
                })
                .collect(),
            validator_updates,
            consensus_param_updates: None,
            app_hash: app_hash(&result.app_hash),
        })
    }

    fn handle(&mut self, req: Request) -> Result<Response, BoxError> {
        Ok(match req {
            Request::Info(_) => Response::Info(info(&self.ledger.reader())),
            Request::InitChain(r) => Response::InitChain(self.init_chain(r)?),
            Request::Query(r) => Response::Query(query(&self.ledger.reader(), r)),
            Request::CheckTx(r) => Response::CheckTx(self.check_tx(r)),
            Request::PrepareProposal(r) => Response::PrepareProposal(self.prepare_proposal(r)?),
            Request::ProcessProposal(r) => Response::ProcessProposal(self.process_proposal(r)),
            Request::ExtendVote(_) => Response::ExtendVote(response::ExtendVote {
                vote_extension: Bytes::new(),
            }),
            Request::VerifyVoteExtension(_) => {
                Response::VerifyVoteExtension(response::VerifyVoteExtension::Accept)
            }
            Request::FinalizeBlock(r) => Response::FinalizeBlock(self.finalize_block(r)?),
            Request::Commit => {
                let height = self.ledger.commit()?;
                tracing::debug!(height, "committed");
                Response::Commit(response::Commit {
                    data: Bytes::new(),
                    retain_height: 0u32.into(),
                })
            }
            Request::Flush => Response::Flush,
            Request::Echo(e) => Response::Echo(response::Echo { message: e.message }),
            Request::ListSnapshots => Response::ListSnapshots(Default::default()),
            Request::OfferSnapshot(_) => Response::OfferSnapshot(Default::default()),
            Request::LoadSnapshotChunk(_) => Response::LoadSnapshotChunk(Default::default()),
            Request::ApplySnapshotChunk(_) => Response::ApplySnapshotChunk(Default::default()),
        })
    }
}

impl Service<Request> for App {
    type Response = Response;
    type Error = BoxError;
    type Future = Reply;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Reply {
        let result = self.handle(req);
        if let Err(e) = &result {
            // A consensus request that fails leaves CometBFT unable to go on;
            // it stops, and the handshake on restart replays what is missing.
            tracing::error!(error = %e, "ABCI request failed");
        }
        Box::pin(async move { result })
    }
}

fn info(reader: &LedgerReader) -> response::Info {
    let (height, hash) = reader
        .info()
        .map(|c| (c.height, app_hash(&c.app_hash)))
        .unwrap_or_default();
    response::Info {
        data: "pyrsia".into(),
        version: APP_VERSION.into(),
        app_version: 1,
        last_block_height: height.try_into().unwrap_or_default(),
        last_block_app_hash: hash,
    }
}

fn query(reader: &LedgerReader, req: request::Query) -> response::Query {
    match reader.query(&req.path, req.height.value(), req.prove) {
        Ok(answer) => response::Query {
            code: Code::Ok,
            log: if answer.value.is_some() {
                "exists"
            } else {
                "does not exist"
            }
            .into(),
            key: Bytes::from(answer.key.clone()),
            value: answer.value.map(Bytes::from).unwrap_or_default(),
            proof: answer.proof.map(|p| ProofOps {
                ops: vec![ProofOp {
                    field_type: PROOF_OP_TYPE.into(),
                    key: answer.key,
                    data: encode_proof(&p),
                }],
            }),
            height: answer.height.try_into().unwrap_or_default(),
            ..Default::default()
        },
        Err(e) => response::Query {
            code: Code::from(1),
            log: e.to_string(),
            ..Default::default()
        },
    }
}

/// The info connection: Info and Query from the committed state.
#[derive(Clone, Debug)]
pub struct Queries {
    reader: LedgerReader,
}

impl Service<InfoRequest> for Queries {
    type Response = InfoResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<InfoResponse, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: InfoRequest) -> Self::Future {
        let reader = self.reader.clone();
        Box::pin(async move {
            Ok(match req {
                InfoRequest::Info(_) => InfoResponse::Info(info(&reader)),
                InfoRequest::Query(q) => InfoResponse::Query(
                    tokio::task::spawn_blocking(move || query(&reader, q)).await?,
                ),
                InfoRequest::Echo(e) => InfoResponse::Echo(response::Echo { message: e.message }),
            })
        })
    }
}

/// Serves the ledger to CometBFT on `addr` until the process ends.
pub async fn serve(
    ledger: Ledger,
    proposer: Option<Proposer>,
    addr: SocketAddr,
) -> Result<(), AbciError> {
    // The bound queues each connection's requests before the single owner.
    let queries = Queries {
        reader: ledger.reader(),
    };
    let (consensus, mempool, snapshot, _) = split::service(App::new(ledger, proposer), 64);
    let server = Server::builder()
        .consensus(consensus)
        .snapshot(snapshot)
        // No load shedding: tower-abci drops the connection on any service
        // error, and CometBFT stops when a connection drops. Back-pressure instead.
        .mempool(mempool)
        .info(queries)
        .finish()
        .ok_or_else(|| AbciError::Server("incomplete server".into()))?;
    tracing::info!(%addr, "ABCI app listening");
    server
        .listen_tcp(addr)
        .await
        .map_err(|e| AbciError::Server(e.to_string()))
}
