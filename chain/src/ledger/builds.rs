//! Rules of build requests, attestations and trusted imports.

use super::*;

/// The one recipe that builds an ecosystem's packages.
fn recipe_for(ecosystem: &str) -> Result<&'static str, TxError> {
    match ecosystem {
        "cargo" => Ok("cargo"),
        "maven" => Ok("maven"),
        "npm" => Ok("npm"),
        "python" => Ok("python"),
        "script" => Ok("script"),
        other => Err(TxError::InvalidField(format!(
            "no recipe builds ecosystem {other:?} (cargo, maven, npm, python, script)"
        ))),
    }
}

impl Exec<'_> {
    pub(super) fn add_to_package(
        &mut self,
        package: &PackageId,
        id: Digest,
    ) -> Result<(), TxError> {
        let key = state_key::package(package);
        let mut record: PackageRecord = self.get(&key)?.unwrap_or_default();
        if record.request_count == 0 {
            self.add_version(package)?;
        }
        self.append_to_page(
            state_key::package_requests(package, record.request_count / INDEX_PAGE),
            id,
        )?;
        record.request_count += 1;
        self.put(key, &record);
        Ok(())
    }

    pub(super) fn request_build(
        &mut self,
        signer: PublicKey,
        r: &BuildRequest,
    ) -> Result<(), TxError> {
        let params = self.params()?;
        self.package(&r.package, params.max_field_len)?;
        self.text("source.repo_url", &r.source.repo_url, params.max_field_len)?;
        let commit = &r.source.commit;
        let hex_len = matches!(commit.len(), 40 | 64);
        if !hex_len
            || !commit
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TxError::InvalidField(format!(
                "source.commit {commit:?} must be a full commit id: 40 or 64 lowercase hex"
            )));
        }
        self.text("recipe", &r.recipe, params.max_field_len)?;
        let expected = recipe_for(&r.package.ecosystem)?;
        if r.recipe != expected {
            return Err(TxError::RecipeMismatch {
                ecosystem: r.package.ecosystem.clone(),
                recipe: r.recipe.clone(),
                expected: expected.to_owned(),
            });
        }
        let name_key = state_key::name(&r.package.ecosystem, &r.package.name);
        if let Some(binding) = self.get::<NameBinding>(&name_key)? {
            if binding.repo_url != r.source.repo_url {
                return Err(TxError::NameBoundElsewhere {
                    package: r.package.to_string(),
                    bound: binding.repo_url,
                    requested: r.source.repo_url.clone(),
                });
            }
        }
        if let Some(release) = self.get::<Release>(&state_key::released(&r.package))? {
            if release.source != r.source {
                return Err(TxError::VersionReleased {
                    package: r.package.to_string(),
                    released: format!("{} at {}", release.source.repo_url, release.source.commit),
                    requested: format!("{} at {}", r.source.repo_url, r.source.commit),
                });
            }
        }
        let id = r.id();
        let key = state_key::request(id);
        if self.get::<RequestRecord>(&key)?.is_some() {
            return Err(TxError::DuplicateRequest(id));
        }
        self.open_request(signer, &r.package, &params)?;
        // Builders are drawn at the start of the next block, from the seed
        // its proposer's beacon makes: unknown to whoever orders this block.
        self.append_to(state_key::select(self.height + 1), id)?;
        let record = RequestRecord::new(id, RequestOrigin::Build(r.clone()), signer, self.height);
        self.put(key, &record);
        self.add_to_package(&r.package, id)?;
        self.emit(
            "build_requested",
            vec![
                ("request_id", id.to_string()),
                ("ecosystem", r.package.ecosystem.clone()),
                ("package", r.package.to_string()),
                ("recipe", r.recipe.clone()),
            ],
        );
        Ok(())
    }

    pub(super) fn attest(&mut self, signer: PublicKey, a: &Attest) -> Result<(), TxError> {
        let params = self.params()?;
        self.outputs(&a.outputs, &params)?;
        self.text("build_env", &a.build_env, params.max_field_len)?;
        if let Some(p) = &a.provenance {
            self.outputs(std::slice::from_ref(p), &params)?;
        }
        let key = state_key::request(a.request_id);
        let mut record: RequestRecord = self
            .get(&key)?
            .ok_or(TxError::UnknownRequest(a.request_id))?;
        if record.attestations.iter().any(|x| x.attester == signer) {
            return Err(TxError::DuplicateAttestation {
                attester: signer.to_string(),
                request: a.request_id,
            });
        }
        if record.failures.iter().any(|f| f.builder == signer) {
            return Err(TxError::AnswerConflict {
                builder: signer.to_string(),
                request: a.request_id,
                had: "reported a failure of",
            });
        }
        let role = self.answering_role(signer, &record)?;
        self.record_attestation(
            &mut record,
            AttestationRecord {
                attester: signer,
                role,
                height: self.height,
                outputs: a.outputs.clone(),
                build_env: a.build_env.clone(),
                log_digest: a.log_digest,
                provenance: a.provenance.clone(),
            },
            &params,
        )?;
        self.put(key, &record);
        Ok(())
    }

    /// How `signer` may answer (attest, or report a failure of) a request:
    /// as a certified trusted node, or as one of its selected builders.
    fn answering_role(
        &self,
        signer: PublicKey,
        record: &RequestRecord,
    ) -> Result<AttesterRole, TxError> {
        let node: Option<NodeRecord> = self.get(&state_key::node(signer))?;
        if node.as_ref().is_some_and(|n| n.is_certified_at(self.time)) {
            Ok(AttesterRole::Trusted)
        } else if matches!(record.origin, RequestOrigin::Build(_))
            && record.selected.contains(&signer)
        {
            if node.as_ref().is_none_or(|n| n.admission.is_none()) {
                return Err(TxError::NotAdmitted(signer.to_string()));
            }
            Ok(AttesterRole::Regular)
        } else if matches!(record.origin, RequestOrigin::Import { .. }) {
            Err(TxError::NotTrustedNode(signer.to_string()))
        } else {
            Err(TxError::NotSelected {
                attester: signer.to_string(),
                request: record.id,
            })
        }
    }

    /// A builder's failed build: recorded on the request (once per builder,
    /// never beside an attestation of the same builder), announced as
    /// `build_failed`, and never counted toward the trust level. It is an
    /// answer: the builder's missed deadlines are reset as by an attestation.
    pub(super) fn report_failure(
        &mut self,
        signer: PublicKey,
        f: &ReportFailure,
    ) -> Result<(), TxError> {
        let key = state_key::request(f.request_id);
        let mut record: RequestRecord = self
            .get(&key)?
            .ok_or(TxError::UnknownRequest(f.request_id))?;
        if let RequestOrigin::Import { .. } = record.origin {
            return Err(TxError::InvalidField(format!(
                "request {} is an import: nothing was built, so nothing failed",
                f.request_id
            )));
        }
        if record.failures.iter().any(|x| x.builder == signer) {
            return Err(TxError::DuplicateFailure {
                builder: signer.to_string(),
                request: f.request_id,
            });
        }
        if record.attestations.iter().any(|x| x.attester == signer) {
            return Err(TxError::AnswerConflict {
                builder: signer.to_string(),
                request: f.request_id,
                had: "attested",
            });
        }
        let role = self.answering_role(signer, &record)?;
        let node_key = state_key::node(signer);
        if let Some(mut node) = self.get::<NodeRecord>(&node_key)? {
            if let Some(builder) = node.builder.as_mut().filter(|b| b.missed_deadlines > 0) {
                builder.missed_deadlines = 0;
                self.put(node_key, &node);
            }
        }
        record.failures.push(FailureRecord {
            builder: signer,
            role,
            height: self.height,
            reason: f.reason,
            log_digest: f.log_digest,
        });
        self.emit(
            "build_failed",
            vec![
                ("request_id", f.request_id.to_string()),
                ("builder", signer.to_string()),
                ("role", format!("{role:?}").to_lowercase()),
                ("reason", f.reason.to_string()),
                (
                    "log_digest",
                    f.log_digest.map(|d| d.to_string()).unwrap_or_default(),
                ),
            ],
        );
        self.put(key, &record);
        Ok(())
    }

    pub(super) fn trusted_import(
        &mut self,
        signer: PublicKey,
        i: &TrustedImport,
    ) -> Result<(), TxError> {
        let params = self.params()?;
        self.package(&i.package, params.max_field_len)?;
        self.outputs(&i.outputs, &params)?;
        self.text("upstream", &i.upstream, params.max_field_len)?;
        self.require_trusted_node(signer)?;
        let id = i.record_id();
        let key = state_key::request(id);
        let mut record = match self.get::<RequestRecord>(&key)? {
            Some(r) => r,
            None => {
                self.add_to_package(&i.package, id)?;
                let origin = RequestOrigin::Import {
                    package: i.package.clone(),
                    upstream: i.upstream.clone(),
                };
                RequestRecord::new(id, origin, signer, self.height)
            }
        };
        if record.attestations.iter().any(|x| x.attester == signer) {
            return Err(TxError::DuplicateAttestation {
                attester: signer.to_string(),
                request: id,
            });
        }
        self.record_attestation(
            &mut record,
            AttestationRecord {
                attester: signer,
                role: AttesterRole::Trusted,
                height: self.height,
                outputs: i.outputs.clone(),
                build_env: format!("import from {}", i.upstream),
                log_digest: Digest::default(),
                provenance: None,
            },
            &params,
        )?;
        self.put(key, &record);
        Ok(())
    }

    /// Appends an attestation, indexes its artifacts and (so that a later
    /// revocation or removal can find it) the request under its attester,
    /// and re-derives the level.
    pub(super) fn record_attestation(
        &mut self,
        record: &mut RequestRecord,
        attestation: AttestationRecord,
        params: &Params,
    ) -> Result<(), TxError> {
        for o in &attestation.outputs {
            let key = state_key::artifact(o.sha256);
            let layout = StripeLayout {
                stripe_size: o.stripe_size,
                stripe_root: o.stripe_root,
            };
            let mut artifact = self.get::<ArtifactRecord>(&key)?.unwrap_or(ArtifactRecord {
                size: o.size,
                layouts: Vec::new(),
                request_count: 0,
            });
            let new_layout =
                artifact.layouts.len() < MAX_LAYOUTS && !artifact.layouts.contains(&layout);
            // The request is indexed under these bytes by its first attestation of them.
            let new_request = !record
                .attestations
                .iter()
                .any(|a| a.outputs.iter().any(|x| x.sha256 == o.sha256));
            if new_layout {
                artifact.layouts.push(layout);
            }
            if new_request {
                self.append_to_page(
                    state_key::artifact_requests(o.sha256, artifact.request_count / INDEX_PAGE),
                    record.id,
                )?;
                artifact.request_count += 1;
            }
            if new_layout || new_request {
                self.put(key, &artifact);
            }
        }
        let node_key = state_key::node(attestation.attester);
        let mut node: NodeRecord = self.get(&node_key)?.unwrap_or_default();
        self.append_to_page(
            state_key::attested(attestation.attester, node.attestation_count / INDEX_PAGE),
            record.id,
        )?;
        node.attestation_count += 1;
        if let Some(builder) = node.builder.as_mut() {
            builder.missed_deadlines = 0;
        }
        self.put(node_key, &node);
        self.emit(
            "attested",
            vec![
                ("request_id", record.id.to_string()),
                ("attester", attestation.attester.to_string()),
                ("role", format!("{:?}", attestation.role).to_lowercase()),
            ],
        );
        record.attestations.push(attestation);
        self.set_level(record, evaluate(params, &record.attestations))
    }

    /// Counts a new request against the signer's, the package name's and the
    /// ecosystem's limits of requests in their selection rounds.
    fn open_request(
        &mut self,
        signer: PublicKey,
        package: &PackageId,
        params: &Params,
    ) -> Result<(), TxError> {
        let scopes = [
            (
                state_key::open_by_signer(signer),
                u32::from(params.max_open_per_signer),
                format!("signer {signer}"),
            ),
            (
                state_key::open_by_package(&package.ecosystem, &package.name),
                u32::from(params.max_open_per_package),
                format!("package {}:{}", package.ecosystem, package.name),
            ),
            (
                state_key::open_by_ecosystem(&package.ecosystem),
                params.max_open_per_ecosystem,
                format!("ecosystem {}", package.ecosystem),
            ),
        ];
        for (key, limit, scope) in scopes {
            let open: u32 = self.get(&key)?.unwrap_or(0);
            if open >= limit {
                return Err(TxError::TooManyOpen { scope, limit });
            }
            self.put(key, &(open + 1));
        }
        Ok(())
    }

    /// A request left its selection rounds: it no longer counts against the
    /// limits of [`Exec::open_request`].
    pub(super) fn close_request(
        &mut self,
        requester: PublicKey,
        package: &PackageId,
    ) -> Result<(), TxError> {
        for key in [
            state_key::open_by_signer(requester),
            state_key::open_by_package(&package.ecosystem, &package.name),
            state_key::open_by_ecosystem(&package.ecosystem),
        ] {
            let open: u32 = self.get(&key)?.unwrap_or(0);
            match open.checked_sub(1) {
                Some(0) => self.delete(key),
                Some(n) => self.put(key, &n),
                None => return Err(super::builders::corrupt(&key)),
            }
        }
        Ok(())
    }

    /// Appends `id` to one page of a paged index.
    /// Lists a new version under its name, so that a registry front-end can
    /// enumerate a name's versions with proofs.
    fn add_version(&mut self, package: &PackageId) -> Result<(), TxError> {
        let key = state_key::versions(&package.ecosystem, &package.name);
        let mut record: VersionsRecord = self.get(&key)?.unwrap_or_default();
        let page_key =
            state_key::version_list(&package.ecosystem, &package.name, record.count / INDEX_PAGE);
        let mut page: Vec<String> = self.get(&page_key)?.unwrap_or_default();
        page.push(package.version.clone());
        self.put(page_key, &page);
        record.count += 1;
        self.put(key, &record);
        Ok(())
    }

    fn append_to_page(&mut self, page_key: String, id: Digest) -> Result<(), TxError> {
        let mut page: Vec<Digest> = self.get(&page_key)?.unwrap_or_default();
        page.push(id);
        self.put(page_key, &page);
        Ok(())
    }

    /// Appends `id` to the list at `key` (one block's work list).
    pub(super) fn append_to(&mut self, key: String, id: Digest) -> Result<(), TxError> {
        let mut due: Vec<Digest> = self.get(&key)?.unwrap_or_default();
        due.push(id);
        self.put(key, &due);
        Ok(())
    }

    pub(super) fn set_level(
        &mut self,
        record: &mut RequestRecord,
        level: TrustLevel,
    ) -> Result<(), TxError> {
        if level != record.level {
            self.settle_name_and_release(record, level)?;
            self.emit(
                "trust_changed",
                vec![
                    ("request_id", record.id.to_string()),
                    ("package", record.origin.package().to_string()),
                    ("from", record.level.to_string()),
                    ("to", level.to_string()),
                ],
            );
            record.level = level;
        }
        Ok(())
    }
}
