//! Governance: board approvals, certification, revocation, parameters.

use super::*;

pub(super) fn validate_params(p: &Params) -> Result<(), TxError> {
    let bad = |what: &str| Err(TxError::InvalidField(format!("params: {what}")));
    if p.builders_per_request == 0 {
        return bad("builders_per_request must be at least 1");
    }
    if p.quorum == 0 || p.quorum > p.builders_per_request {
        return bad("quorum must be between 1 and builders_per_request");
    }
    if p.trusted_for_reproducible == 0 {
        return bad("trusted_for_reproducible must be at least 1");
    }
    if p.max_outputs == 0 {
        return bad("max_outputs must be at least 1");
    }
    if p.max_field_len < 64 {
        return bad("max_field_len must be at least 64");
    }
    Ok(())
}

impl Exec<'_> {
    pub(super) fn governance(&mut self, g: &Governance) -> Result<(), TxError> {
        let seq: u64 = self.get(state_key::GOV_SEQ)?.unwrap_or(0);
        if g.seq != seq {
            return Err(TxError::GovSequence {
                expected: seq,
                got: g.seq,
            });
        }
        let board: Board = self
            .get(state_key::BOARD)?
            .ok_or_else(|| TxError::BadApproval("no governance board in state".into()))?;
        let msg = gov_sign_bytes(self.chain_id, g.seq, &g.action);
        let mut approvers = std::collections::BTreeSet::new();
        for approval in &g.approvals {
            if !board.keys.contains(&approval.board_key) {
                return Err(TxError::BadApproval(format!(
                    "{} is not on the board",
                    approval.board_key
                )));
            }
            if !approvers.insert(approval.board_key) {
                return Err(TxError::BadApproval(format!(
                    "{} approved twice",
                    approval.board_key
                )));
            }
            if !verify(&approval.board_key, &approval.signature, &msg) {
                return Err(TxError::BadApproval(format!(
                    "signature of {} does not verify",
                    approval.board_key
                )));
            }
        }
        let need = usize::from(board.threshold);
        if approvers.len() < need {
            return Err(TxError::BelowThreshold {
                have: approvers.len(),
                need,
            });
        }
        match &g.action {
            GovAction::CertifyTrustedNode { node, valid_until } => {
                let key = state_key::node(*node);
                let mut record: NodeRecord = self.get(&key)?.unwrap_or_default();
                if record.admission.is_some() {
                    return Err(TxError::RoleConflict {
                        key: node.to_string(),
                        is: "an admitted builder (remove it first)",
                    });
                }
                record.certification = Some(Certification {
                    valid_until: *valid_until,
                    certified_height: self.height,
                });
                self.put(key, &record);
                self.emit(
                    "trusted_node_certified",
                    vec![
                        ("node", node.to_string()),
                        ("valid_until", valid_until.to_string()),
                    ],
                );
            }
            GovAction::RevokeTrustedNode {
                node,
                incident,
                incident_since_height,
            } => self.revoke(*node, incident, *incident_since_height)?,
            GovAction::BindName(b) => {
                self.name_fields(b)?;
                self.bind_name(b, NameAuthority::Board);
            }
            GovAction::AdmitBuilder { builder } => self.admit_builder(*builder, Sponsor::Board)?,
            GovAction::RemoveBuilder {
                builder,
                reason,
                since_height,
            } => self.remove_builder(*builder, reason, *since_height)?,
            GovAction::SetValidator {
                pub_key,
                power,
                vrf_public,
            } => self.set_validator(*pub_key, *power, *vrf_public)?,
            GovAction::UpdateParams(p) => {
                validate_params(p)?;
                self.put(state_key::PARAMS.into(), p);
                self.emit("params_updated", vec![]);
            }
        }
        self.put(state_key::GOV_SEQ.into(), &(seq + 1));
        Ok(())
    }

    /// Adds, re-weights or (power 0) removes a validator, keeping the beacon
    /// keys in step: an added validator's key counts at once (CometBFT lets
    /// it propose two blocks later), a removed one's leaves at the start of
    /// the next block (CometBFT lets it propose one more). FinalizeBlock
    /// sends CometBFT the difference the block made to `validators`.
    pub(super) fn set_validator(
        &mut self,
        pub_key: PublicKey,
        power: u64,
        vrf_public: Option<VrfPublic>,
    ) -> Result<(), TxError> {
        let mut set: Validators = self.get(state_key::VALIDATORS)?.ok_or_else(|| {
            TxError::ValidatorSet(
                "this chain's validator set is not in its state (it was initialised without one)"
                    .into(),
            )
        })?;
        if power > MAX_VALIDATOR_POWER {
            return Err(TxError::InvalidField(format!(
                "power {power} exceeds {MAX_VALIDATOR_POWER}"
            )));
        }
        if !valid_public_key(&pub_key) {
            return Err(TxError::InvalidField(format!(
                "{pub_key} is not an ed25519 public key"
            )));
        }
        let address = validator_address(&pub_key);
        let mut keys: BeaconKeys = self.get(state_key::BEACON_KEYS)?.unwrap_or_default();
        let mut retiring: Vec<Vec<u8>> = self.get(state_key::BEACON_RETIRING)?.unwrap_or_default();
        let current = set.power_of(&pub_key);
        let beacon_chain = !keys.keys.is_empty();
        match (current, power) {
            (None, 0) => return Err(TxError::UnknownValidator(pub_key.to_string())),
            (Some(_), 0) => {
                if vrf_public.is_some() {
                    return Err(TxError::InvalidField(
                        "a removal carries no beacon key".into(),
                    ));
                }
                if set.validators.len() == 1 {
                    return Err(TxError::ValidatorSet(
                        "removing the last validator would stop the chain".into(),
                    ));
                }
                if beacon_chain && !retiring.contains(&address) {
                    retiring.push(address.clone());
                    retiring.sort();
                }
            }
            (Some(_), _) => {
                if let Some(vrf) = vrf_public {
                    if keys.of(&address) != Some(&vrf.0) {
                        return Err(TxError::InvalidField(
                            "an existing validator keeps its beacon key".into(),
                        ));
                    }
                }
            }
            (None, _) => {
                if set.validators.len() >= MAX_VALIDATORS {
                    return Err(TxError::ValidatorSet(format!(
                        "the set already holds {MAX_VALIDATORS} validators, its limit"
                    )));
                }
                match (beacon_chain, vrf_public) {
                    (true, None) => {
                        return Err(TxError::InvalidField(
                            "a new validator needs a beacon key on a chain with beacon keys".into(),
                        ))
                    }
                    (false, Some(_)) => {
                        return Err(TxError::InvalidField(
                            "this chain has no beacon keys: a new validator may not bring one"
                                .into(),
                        ))
                    }
                    (true, Some(vrf)) => {
                        if !beacon::valid_public(&vrf.0) {
                            return Err(TxError::InvalidField(format!(
                                "{vrf} is not a VRF public key"
                            )));
                        }
                        if keys.keys.iter().any(|(a, k)| *k == vrf.0 && *a != address) {
                            return Err(TxError::InvalidField(format!(
                                "beacon key {vrf} already belongs to another validator"
                            )));
                        }
                        keys.set(address.clone(), vrf.0);
                        retiring.retain(|a| *a != address);
                    }
                    (false, None) => {}
                }
            }
        }
        set.set(pub_key, power);
        if set.total_power() == 0 {
            return Err(TxError::ValidatorSet(
                "no voting power would be left".into(),
            ));
        }
        self.put(state_key::VALIDATORS.into(), &set);
        if beacon_chain {
            self.put(state_key::BEACON_KEYS.into(), &keys);
            if retiring.is_empty() {
                self.delete(state_key::BEACON_RETIRING.into());
            } else {
                self.put(state_key::BEACON_RETIRING.into(), &retiring);
            }
        }
        self.emit(
            "validator_set",
            vec![
                ("pub_key", pub_key.to_string()),
                ("address", hex::encode_upper(&address)),
                ("power", power.to_string()),
            ],
        );
        Ok(())
    }

    /// At the start of a block: the beacon keys of the validators removed in
    /// the previous one stop counting, as CometBFT no longer lets them propose.
    pub(super) fn retire_beacon_keys(&mut self) -> Result<(), TxError> {
        let Some(retiring) = self.get::<Vec<Vec<u8>>>(state_key::BEACON_RETIRING)? else {
            return Ok(());
        };
        let mut keys: BeaconKeys = self.get(state_key::BEACON_KEYS)?.unwrap_or_default();
        for address in &retiring {
            keys.remove(address);
        }
        self.put(state_key::BEACON_KEYS.into(), &keys);
        self.delete(state_key::BEACON_RETIRING.into());
        Ok(())
    }

    /// Ends the node's certification and queues the voiding of its trusted
    /// attestations made at or after the incident's start. The builders it
    /// admitted during the incident are removed too: a compromised sponsor
    /// may have admitted Sybils.
    pub(super) fn revoke(
        &mut self,
        node: PublicKey,
        incident: &str,
        since: u64,
    ) -> Result<(), TxError> {
        let params = self.params()?;
        let key = state_key::node(node);
        let mut record: NodeRecord = self
            .get(&key)?
            .ok_or_else(|| TxError::UnknownNode(node.to_string()))?;
        record.certification = None;
        self.record_incident(node, &mut record, AttesterRole::Trusted, incident, since)?;
        self.put(key, &record);
        for builder in record.sponsored {
            let admitted: Option<NodeRecord> = self.get(&state_key::node(builder))?;
            let during_incident = admitted
                .and_then(|b| b.admission)
                .is_some_and(|a| a.height >= since);
            if during_incident {
                let reason = format!("admitted by {node}, revoked for an incident");
                let reason: String = reason.chars().take(params.max_field_len as usize).collect();
                self.remove_builder(builder, &reason, since)?;
            }
        }
        self.emit(
            "trusted_node_revoked",
            vec![
                ("node", node.to_string()),
                ("incident_since_height", since.to_string()),
            ],
        );
        Ok(())
    }
}
