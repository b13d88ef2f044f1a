//! Rules of package names and released versions.

use super::*;

impl Exec<'_> {
    /// A build reaching `trusted` or above releases its coordinates from its
    /// source and binds an unbound name to its repository: a certified trusted
    /// node vouched for it. Falling below `trusted` again (a revocation)
    /// undoes what this request did, and nothing else.
    pub(super) fn settle_name_and_release(
        &mut self,
        record: &RequestRecord,
        level: TrustLevel,
    ) -> Result<(), TxError> {
        let RequestOrigin::Build(request) = &record.origin else {
            return Ok(());
        };
        let established =
            |l: TrustLevel| matches!(l, TrustLevel::Trusted | TrustLevel::Reproducible);
        let release_key = state_key::released(&request.package);
        let name_key = state_key::name(&request.package.ecosystem, &request.package.name);
        match (established(record.level), established(level)) {
            (false, true) => {
                if self.get::<Release>(&release_key)?.is_none() {
                    let release = Release {
                        source: request.source.clone(),
                        request: record.id,
                        height: self.height,
                    };
                    self.put(release_key, &release);
                }
                if self.get::<NameBinding>(&name_key)?.is_none() {
                    let binding = NameBinding {
                        repo_url: request.source.repo_url.clone(),
                        bound_by: NameAuthority::TrustedBuild(record.id),
                        height: self.height,
                    };
                    self.put(name_key, &binding);
                    self.emit(
                        "name_bound",
                        vec![
                            ("ecosystem", request.package.ecosystem.clone()),
                            ("name", request.package.name.clone()),
                            ("repo_url", request.source.repo_url.clone()),
                        ],
                    );
                }
            }
            (true, false) => {
                if self
                    .get::<Release>(&release_key)?
                    .is_some_and(|r| r.request == record.id)
                {
                    self.delete(release_key);
                }
                if self
                    .get::<NameBinding>(&name_key)?
                    .is_some_and(|b| b.bound_by == NameAuthority::TrustedBuild(record.id))
                {
                    self.delete(name_key);
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn name_fields(&self, b: &BindName) -> Result<(), TxError> {
        let params = self.params()?;
        self.ecosystem(&b.ecosystem)?;
        self.text("name", &b.name, params.max_field_len)?;
        self.text("repo_url", &b.repo_url, params.max_field_len)
    }

    pub(super) fn bind_name(&mut self, b: &BindName, bound_by: NameAuthority) {
        let binding = NameBinding {
            repo_url: b.repo_url.clone(),
            bound_by,
            height: self.height,
        };
        self.put(state_key::name(&b.ecosystem, &b.name), &binding);
        self.emit(
            "name_bound",
            vec![
                ("ecosystem", b.ecosystem.clone()),
                ("name", b.name.clone()),
                ("repo_url", b.repo_url.clone()),
            ],
        );
    }

    /// A certified trusted node binds a name nobody has bound yet.
    pub(super) fn bind_name_by_trusted_node(
        &mut self,
        signer: PublicKey,
        b: &BindName,
    ) -> Result<(), TxError> {
        self.name_fields(b)?;
        self.require_trusted_node(signer)?;
        let key = state_key::name(&b.ecosystem, &b.name);
        if let Some(existing) = self.get::<NameBinding>(&key)? {
            if existing.repo_url != b.repo_url {
                return Err(TxError::NameAlreadyBound {
                    name: format!("{}:{}", b.ecosystem, b.name),
                    bound: existing.repo_url,
                });
            }
            return Ok(());
        }
        self.bind_name(b, NameAuthority::TrustedNode(signer));
        Ok(())
    }
}
