//! The Pyrsia ABCI 2.0 application: binds [`pyrsia_chain::Ledger`] to CometBFT.
//!
//! CometBFT opens four connections (consensus, mempool, info, snapshot).
//! [`App`] answers the requests that read or change the ledger's working
//! state, one at a time; Info and Query are answered from the committed
//! versions only. The socket server is in `server`.

mod server;

use std::net::TcpListener;

use bytes::Bytes;
use pyrsia_chain::beacon::{is_beacon_tx, BeaconKey};
use pyrsia_chain::ledger::BlockInfo;
use pyrsia_chain::proof::{encode_proof, PROOF_OP_TYPE};
use pyrsia_chain::{GenesisState, Ledger, LedgerReader, ValidatorUpdate};
use tendermint::abci::types::ExecTxResult;
use tendermint::abci::{response, Code, Event, EventAttributeIndexExt};
use tendermint::merkle::proof::{ProofOp, ProofOps};
use tendermint::v0_38::abci::{request, Request, Response};
use tendermint::{validator, AppHash};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AbciError {
    #[error("ABCI server: {0}")]
    Server(String),
    #[error("starting an ABCI server thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A consensus request failed: the app's state cannot go on from here.
    #[error("ABCI request failed: {0}")]
    Request(#[source] BoxError),
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
            Request::InitChain(r) => Response::InitChain(self.init_chain(r)?),
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
            Request::Info(_) | Request::Query(_) | Request::Echo(_) | Request::Flush => {
                return Err(format!("{req:?} is the server's to answer, not the app's").into())
            }
            Request::ListSnapshots => Response::ListSnapshots(Default::default()),
            Request::OfferSnapshot(_) => Response::OfferSnapshot(Default::default()),
            Request::LoadSnapshotChunk(_) => Response::LoadSnapshotChunk(Default::default()),
            Request::ApplySnapshotChunk(_) => Response::ApplySnapshotChunk(Default::default()),
        })
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

/// Serves the ledger to CometBFT on `listener` until a consensus request
/// fails, and returns that failure.
pub async fn serve(
    ledger: Ledger,
    proposer: Option<Proposer>,
    listener: TcpListener,
) -> Result<(), AbciError> {
    tracing::info!(addr = ?listener.local_addr().ok(), "ABCI app listening");
    let (fatal, mut failed) = tokio::sync::mpsc::channel(1);
    server::spawn(listener, App::new(ledger, proposer), fatal).map_err(AbciError::Thread)?;
    Err(failed
        .recv()
        .await
        .unwrap_or_else(|| AbciError::Server("the ABCI server stopped".into())))
}
