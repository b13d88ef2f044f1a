//! Work the ledger does at the start of every block, after its beacon and
//! before its transactions, each step bounded: drawing the builders of the
//! previous block's requests, ending the selection rounds due at this
//! height, and voiding a few pages of a revoked node's attestations.

use super::*;

/// Pages of `attested/{node}/…` voided per block: 512 requests re-derived,
/// so a revocation of any size never makes one block slow.
pub const VOID_PAGES_PER_BLOCK: u64 = 2;

impl Exec<'_> {
    pub(super) fn upkeep(&mut self) -> Result<(), TxError> {
        let params = self.params()?;
        self.start_rounds(&params)?;
        self.end_rounds(&params)?;
        self.void_step(&params)
    }

    /// Draws the builders of the requests committed in the previous block,
    /// from the seed this block's beacon made.
    fn start_rounds(&mut self, params: &Params) -> Result<(), TxError> {
        let key = state_key::select(self.height);
        let Some(ids) = self.get::<Vec<Digest>>(&key)? else {
            return Ok(());
        };
        self.delete(key);
        let seed: Digest = self
            .get(state_key::BEACON_SEED)?
            .ok_or_else(|| super::builders::corrupt(state_key::BEACON_SEED))?;
        for id in ids {
            let key = state_key::request(id);
            let mut record: RequestRecord = self
                .get(&key)?
                .ok_or_else(|| super::builders::corrupt(&key))?;
            let RequestOrigin::Build(request) = &record.origin else {
                return Err(super::builders::corrupt(&key));
            };
            let eco = request.package.ecosystem.clone();
            let count: u32 = self.get(&state_key::builders(&eco))?.unwrap_or(0);
            let want = usize::from(params.builders_per_request);
            let (selected, draws) = select(&seed, &id, 0, count, want, &[], |slot| {
                self.builder_in_slot(&eco, slot)
            })?;
            let deadline = self.height + u64::from(params.attest_timeout_blocks);
            self.append_to(state_key::deadline(deadline), id)?;
            let names: Vec<String> = selected.iter().map(ToString::to_string).collect();
            record.seed = seed;
            record.selected = selected;
            record.draws = draws;
            record.round = 1;
            record.deadline = Some(deadline);
            self.put(key, &record);
            self.emit(
                "builders_selected",
                vec![
                    ("request_id", id.to_string()),
                    ("ecosystem", eco),
                    ("selected", names.join(",")),
                ],
            );
        }
        Ok(())
    }

    /// Ends every selection round due at this height. The requests due were
    /// each scheduled by one transaction, so this work is bounded by the
    /// size of the block that scheduled them.
    fn end_rounds(&mut self, params: &Params) -> Result<(), TxError> {
        let key = state_key::deadline(self.height);
        let Some(due) = self.get::<Vec<Digest>>(&key)? else {
            return Ok(());
        };
        self.delete(key);
        for id in due {
            self.end_round(id, params)?;
        }
        Ok(())
    }

    /// Selected builders that have not attested (silent, or reporting a
    /// failure) are replaced by the next draws of the request's own
    /// sequence, while the request lacks a quorum of regular attestations
    /// and has rounds left; otherwise the request leaves its selection
    /// rounds. Only the silent ones miss a deadline.
    fn end_round(&mut self, id: Digest, params: &Params) -> Result<(), TxError> {
        let key = state_key::request(id);
        let Some(mut record) = self.get::<RequestRecord>(&key)? else {
            return Err(super::builders::corrupt(&key));
        };
        if record.deadline != Some(self.height) {
            return Ok(());
        }
        let RequestOrigin::Build(request) = &record.origin else {
            return Err(super::builders::corrupt(&key));
        };
        let package = request.package.clone();
        let attested: Vec<PublicKey> = record.attestations.iter().map(|a| a.attester).collect();
        // Selected builders without an attestation: the silent ones missed
        // the deadline; the ones that reported a failure answered, so they
        // are not penalised, but they are replaced all the same, exactly as
        // if silent (a failure report cannot keep a slot from a fresh draw).
        let missing: Vec<PublicKey> = record
            .selected
            .iter()
            .filter(|s| !attested.contains(s))
            .copied()
            .collect();
        for builder in &missing {
            if !record.failures.iter().any(|f| f.builder == *builder) {
                self.missed_deadline(*builder, params)?;
            }
        }
        let regular = record
            .attestations
            .iter()
            .filter(|a| a.role == AttesterRole::Regular)
            .count();
        if !missing.is_empty()
            && regular < usize::from(params.quorum)
            && record.round < params.max_attest_rounds
        {
            record.selected.retain(|s| !missing.contains(s));
            record.replaced.extend(&missing);
            let mut excluded = attested;
            excluded.extend(&record.selected);
            excluded.extend(&record.replaced);
            let eco = &package.ecosystem;
            let count: u32 = self.get(&state_key::builders(eco))?.unwrap_or(0);
            let (picks, next) = select(
                &record.seed,
                &id,
                record.draws,
                count,
                missing.len(),
                &excluded,
                |slot| self.builder_in_slot(eco, slot),
            )?;
            record.draws = next;
            if !picks.is_empty() {
                let deadline = self.height + u64::from(params.attest_timeout_blocks);
                self.append_to(state_key::deadline(deadline), id)?;
                record.round += 1;
                record.deadline = Some(deadline);
                let replacements: Vec<String> = picks.iter().map(ToString::to_string).collect();
                let (failed, missed): (Vec<PublicKey>, Vec<PublicKey>) = missing
                    .iter()
                    .partition(|b| record.failures.iter().any(|f| f.builder == **b));
                let names = |keys: Vec<PublicKey>| {
                    keys.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                record.selected.extend(picks);
                self.emit(
                    "builders_replaced",
                    vec![
                        ("request_id", id.to_string()),
                        ("missed", names(missed)),
                        ("failed", names(failed)),
                        ("selected", replacements.join(",")),
                    ],
                );
                self.put(key, &record);
                return Ok(());
            }
        }
        record.deadline = None;
        self.close_request(record.requester, &package)?;
        self.emit(
            "request_closed",
            vec![
                ("request_id", id.to_string()),
                ("level", record.level.to_string()),
            ],
        );
        self.put(key, &record);
        Ok(())
    }

    /// Records an incident on `node` (whose record the caller holds and
    /// stores) and queues the voiding of its attestations in `role` made at
    /// or after `since`.
    pub(super) fn record_incident(
        &mut self,
        node: PublicKey,
        record: &mut NodeRecord,
        role: AttesterRole,
        description: &str,
        since: u64,
    ) -> Result<(), TxError> {
        self.text("incident", description, self.params()?.max_field_len)?;
        if since > self.height {
            return Err(TxError::InvalidField(format!(
                "the incident's start, height {since}, is in the future"
            )));
        }
        record.incidents.push(Incident {
            description: description.to_owned(),
            since_height: since,
            revoked_height: self.height,
        });
        self.queue_void(node, role, since, record)
    }

    /// Queues the voiding of `node`'s attestations in `role` made at or
    /// after `since`; `record` is the node's record as it will be stored.
    fn queue_void(
        &mut self,
        node: PublicKey,
        role: AttesterRole,
        since: u64,
        record: &NodeRecord,
    ) -> Result<(), TxError> {
        let pages = index_pages(record.attestation_count);
        if pages == 0 {
            return Ok(());
        }
        let mut queue: Vec<VoidJob> = self.get(state_key::VOID_QUEUE)?.unwrap_or_default();
        queue.push(VoidJob {
            node,
            role,
            since_height: since,
            next_page: 0,
            pages,
        });
        self.put(state_key::VOID_QUEUE.into(), &queue);
        Ok(())
    }

    /// Voids up to [`VOID_PAGES_PER_BLOCK`] pages, oldest job first.
    fn void_step(&mut self, params: &Params) -> Result<(), TxError> {
        let Some(mut queue) = self.get::<Vec<VoidJob>>(state_key::VOID_QUEUE)? else {
            return Ok(());
        };
        let mut budget = VOID_PAGES_PER_BLOCK;
        while budget > 0 {
            let Some(job) = queue.first_mut() else { break };
            if job.next_page >= job.pages {
                queue.remove(0);
                continue;
            }
            let (node, role, since, page) = (job.node, job.role, job.since_height, job.next_page);
            job.next_page += 1;
            budget -= 1;
            self.void_page(node, role, since, page, params)?;
        }
        queue.retain(|job| job.next_page < job.pages);
        if queue.is_empty() {
            self.delete(state_key::VOID_QUEUE.into());
        } else {
            self.put(state_key::VOID_QUEUE.into(), &queue);
        }
        Ok(())
    }

    fn void_page(
        &mut self,
        node: PublicKey,
        role: AttesterRole,
        since: u64,
        page: u64,
        params: &Params,
    ) -> Result<(), TxError> {
        let ids: Vec<Digest> = self
            .get(&state_key::attested(node, page))?
            .unwrap_or_default();
        for id in ids {
            let request_key = state_key::request(id);
            let Some(mut request) = self.get::<RequestRecord>(&request_key)? else {
                return Err(super::builders::corrupt(&request_key));
            };
            let mut changed = false;
            for a in &mut request.attestations {
                if a.attester == node && a.role == role && a.height >= since {
                    a.role = AttesterRole::Void;
                    changed = true;
                }
            }
            if changed {
                let level = evaluate(params, &request.attestations);
                self.set_level(&mut request, level)?;
                self.put(request_key, &request);
            }
        }
        Ok(())
    }
}
