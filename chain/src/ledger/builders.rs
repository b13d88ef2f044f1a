//! Rules of builders: admission by a sponsor, registration into selection,
//! removal, and the slots selection draws from.

use super::*;

/// The node record of `key`, or an empty one.
fn or_new(record: Option<NodeRecord>) -> NodeRecord {
    record.unwrap_or_default()
}

impl Exec<'_> {
    /// Admits `builder` on `sponsor`'s authority. A trusted node sponsors at
    /// most `params.max_sponsored_builders` at a time; the board, any number.
    pub(super) fn admit_builder(
        &mut self,
        builder: PublicKey,
        sponsor: Sponsor,
    ) -> Result<(), TxError> {
        let key = state_key::node(builder);
        let mut record = or_new(self.get(&key)?);
        if record.is_certified_at(self.time) {
            return Err(TxError::RoleConflict {
                key: builder.to_string(),
                is: "a certified trusted node",
            });
        }
        if let Some(a) = &record.admission {
            return Err(TxError::InvalidField(format!(
                "{builder} is already admitted (by {:?} at height {})",
                a.sponsor, a.height
            )));
        }
        if let Sponsor::TrustedNode(node) = sponsor {
            let limit = self.params()?.max_sponsored_builders;
            let sponsor_key = state_key::node(node);
            let mut sponsor_record = or_new(self.get(&sponsor_key)?);
            if sponsor_record.sponsored.len() >= usize::from(limit) {
                return Err(TxError::SponsorLimit {
                    sponsor: node.to_string(),
                    limit,
                });
            }
            sponsor_record.sponsored.push(builder);
            self.put(sponsor_key, &sponsor_record);
        }
        let by = match &sponsor {
            Sponsor::TrustedNode(node) => node.to_string(),
            Sponsor::Board => "board".to_owned(),
        };
        record.admission = Some(Admission {
            sponsor,
            height: self.height,
        });
        self.put(key, &record);
        self.emit(
            "builder_admitted",
            vec![("builder", builder.to_string()), ("sponsor", by)],
        );
        Ok(())
    }

    pub(super) fn register_builder(
        &mut self,
        signer: PublicKey,
        r: &RegisterBuilder,
    ) -> Result<(), TxError> {
        let params = self.params()?;
        self.text("peer_id", &r.peer_id, params.max_field_len)?;
        if r.ecosystems.is_empty() || r.ecosystems.len() > 16 {
            return Err(TxError::InvalidField(
                "ecosystems must number 1..=16".into(),
            ));
        }
        let mut ecosystems = r.ecosystems.clone();
        ecosystems.sort();
        ecosystems.dedup();
        for eco in &ecosystems {
            self.ecosystem(eco)?;
        }
        let node_key = state_key::node(signer);
        let mut node = or_new(self.get(&node_key)?);
        if node.is_certified_at(self.time) {
            return Err(TxError::RoleConflict {
                key: signer.to_string(),
                is: "a certified trusted node",
            });
        }
        if node.admission.is_none() {
            return Err(TxError::NotAdmitted(signer.to_string()));
        }
        self.leave_selection(signer, &mut node)?;
        let mut slots = Vec::with_capacity(ecosystems.len());
        for eco in &ecosystems {
            slots.push(self.join_selection(signer, eco)?);
        }
        node.builder = Some(BuilderInfo {
            peer_id: r.peer_id.clone(),
            ecosystems: ecosystems.clone(),
            slots,
            registered_height: self.height,
            missed_deadlines: 0,
        });
        self.put(node_key, &node);
        self.emit(
            "builder_registered",
            vec![
                ("builder", signer.to_string()),
                ("ecosystems", ecosystems.join(",")),
            ],
        );
        Ok(())
    }

    /// Ends `builder`'s admission and queues the voiding of its regular
    /// attestations made at or after `since`.
    pub(super) fn remove_builder(
        &mut self,
        builder: PublicKey,
        reason: &str,
        since: u64,
    ) -> Result<(), TxError> {
        let key = state_key::node(builder);
        let mut record = or_new(self.get(&key)?);
        let Some(admission) = record.admission.take() else {
            return Err(TxError::NotAdmitted(builder.to_string()));
        };
        if let Sponsor::TrustedNode(sponsor) = admission.sponsor {
            let sponsor_key = state_key::node(sponsor);
            let mut sponsor_record = or_new(self.get(&sponsor_key)?);
            sponsor_record.sponsored.retain(|b| *b != builder);
            self.put(sponsor_key, &sponsor_record);
        }
        self.leave_selection(builder, &mut record)?;
        record.builder = None;
        self.record_incident(builder, &mut record, AttesterRole::Regular, reason, since)?;
        self.put(key, &record);
        self.emit(
            "builder_removed",
            vec![
                ("builder", builder.to_string()),
                ("since_height", since.to_string()),
            ],
        );
        Ok(())
    }

    /// Puts `builder` in the last slot of `ecosystem`; returns the slot.
    fn join_selection(&mut self, builder: PublicKey, ecosystem: &str) -> Result<u32, TxError> {
        let count_key = state_key::builders(ecosystem);
        let count: u32 = self.get(&count_key)?.unwrap_or(0);
        self.put(state_key::builder_slot(ecosystem, count), &builder);
        self.put(count_key, &(count + 1));
        Ok(count)
    }

    /// Takes `builder` (whose record the caller holds as `node`) out of every
    /// slot it occupies. Each slot is filled by the last one of its
    /// ecosystem, so slots stay dense and removal costs O(1) per ecosystem.
    pub(super) fn leave_selection(
        &mut self,
        builder: PublicKey,
        node: &mut NodeRecord,
    ) -> Result<(), TxError> {
        let Some(info) = node.builder.as_mut() else {
            return Ok(());
        };
        for (eco, slot) in info.ecosystems.iter().zip(std::mem::take(&mut info.slots)) {
            let count_key = state_key::builders(eco);
            let count: u32 = self.get(&count_key)?.unwrap_or(0);
            let last = count.checked_sub(1).ok_or_else(|| corrupt(&count_key))?;
            if slot != last {
                let last_key = state_key::builder_slot(eco, last);
                let moved: PublicKey = self.get(&last_key)?.ok_or_else(|| corrupt(&last_key))?;
                if moved == builder {
                    return Err(corrupt(&last_key));
                }
                self.put(state_key::builder_slot(eco, slot), &moved);
                let moved_key = state_key::node(moved);
                let mut moved_record: NodeRecord =
                    self.get(&moved_key)?.ok_or_else(|| corrupt(&moved_key))?;
                let moved_slot = moved_record
                    .builder
                    .as_mut()
                    .and_then(|b| {
                        let at = b.ecosystems.iter().position(|e| e == eco)?;
                        b.slots.get_mut(at)
                    })
                    .ok_or_else(|| corrupt(&moved_key))?;
                *moved_slot = slot;
                self.put(moved_key, &moved_record);
            }
            self.delete(state_key::builder_slot(eco, last));
            self.put(count_key, &last);
        }
        Ok(())
    }

    /// Reads the builder in `slot` of `ecosystem`.
    pub(super) fn builder_in_slot(&self, ecosystem: &str, slot: u32) -> Result<PublicKey, TxError> {
        let key = state_key::builder_slot(ecosystem, slot);
        self.get(&key)?.ok_or_else(|| corrupt(&key))
    }

    /// A selected builder missed its deadline; after
    /// `params.max_missed_deadlines` in a row it leaves selection until it
    /// registers again.
    pub(super) fn missed_deadline(
        &mut self,
        builder: PublicKey,
        params: &Params,
    ) -> Result<(), TxError> {
        let key = state_key::node(builder);
        let mut record = or_new(self.get(&key)?);
        let Some(info) = record.builder.as_mut() else {
            return Ok(());
        };
        info.missed_deadlines = info.missed_deadlines.saturating_add(1);
        if info.missed_deadlines >= params.max_missed_deadlines && !info.slots.is_empty() {
            self.leave_selection(builder, &mut record)?;
            self.emit("builder_idle", vec![("builder", builder.to_string())]);
        }
        self.put(key, &record);
        Ok(())
    }
}

/// A state invariant that does not hold: the node must stop, not guess.
pub(super) fn corrupt(key: &str) -> TxError {
    TxError::Store(StoreError::Corrupt {
        what: key.to_owned(),
        reason: "missing or inconsistent with the records that index it".into(),
    })
}
