//! Build provenance as Pyrsia builders sign it: an in-toto Statement v1
//! whose predicate is SLSA Provenance v1, signed as a DSSE envelope with the
//! builder's ed25519 key. Pure: building the statement, the DSSE
//! pre-authentication encoding, signing and verifying. Storing the envelope
//! and binding its digest to the ledger are the caller's (see
//! `docs/protocol.md`, "Provenance").
//!
//! The statement is deterministic: the same build gives the same bytes (no
//! clock, fields in a fixed order, maps sorted).

use std::collections::BTreeMap;

use base64::Engine as _;
use ed25519_consensus::{Signature, VerificationKey};
use serde::{Deserialize, Serialize};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA Provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// `buildType` of a Pyrsia build: its external parameters are a ledger
/// build request (`docs/protocol.md`, "Provenance").
pub const BUILD_TYPE: &str = "https://pyrsia.io/build/v1";
/// DSSE `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Prefix of a builder's id: followed by its ed25519 public key in hex.
pub const BUILDER_ID_PREFIX: &str = "pyrsia:builder:";

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("the envelope is not DSSE JSON: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error("payloadType is {0:?}, not {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("{what} is not base64: {source}")]
    Base64 {
        what: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("no signature with keyid {0}")]
    NoSignature(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    #[error("{0} is not an ed25519 public key")]
    BadKey(String),
    #[error("the payload is not an in-toto statement: {0}")]
    Statement(#[source] serde_json::Error),
    #[error("the statement's {field} is {got:?}, expected {expected:?}")]
    Unexpected {
        field: &'static str,
        got: String,
        expected: String,
    },
}

/// A SLSA/in-toto resource descriptor (the fields Pyrsia uses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Algorithm (`sha256`, `gitCommit`) to lower-case hex.
    #[serde(default)]
    pub digest: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotations {
    /// Size in bytes.
    pub size: u64,
}

/// An in-toto Statement v1 with a SLSA Provenance v1 predicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<ResourceDescriptor>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: Provenance,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub build_definition: BuildDefinition,
    pub run_details: RunDetails,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    pub build_type: String,
    pub external_parameters: ExternalParameters,
    pub internal_parameters: InternalParameters,
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// What the requester chose: the ledger's build request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    pub repo_url: String,
    pub commit: String,
    pub recipe: String,
}

/// What the builder chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalParameters {
    /// Sandbox, memory-limit mechanism and tool versions.
    pub build_env: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    pub builder: BuilderRef,
    pub metadata: Metadata,
    pub byproducts: Vec<ResourceDescriptor>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderRef {
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The ledger request id (hex).
    pub invocation_id: String,
}

/// A file by name and SHA-256 (lower-case hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    pub sha256: String,
}

/// A file the dependency step fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub uri: String,
    pub sha256: String,
    pub size: u64,
}

/// Everything a statement says about one build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildFacts {
    pub request_id: String,
    pub parameters: ExternalParameters,
    pub build_env: String,
    /// The builder's ed25519 public key.
    pub builder_key: [u8; 32],
    pub outputs: Vec<Artifact>,
    pub dependencies: Vec<Dependency>,
    pub log: Artifact,
}

/// `pyrsia:builder:<hex public key>`.
pub fn builder_id(key: &[u8; 32]) -> String {
    format!("{BUILDER_ID_PREFIX}{}", hex::encode(key))
}

fn sha256_of(hex: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("sha256".to_owned(), hex.to_owned())])
}

impl Statement {
    /// The statement of a build: subjects are its outputs, sorted by name.
    pub fn new(facts: &BuildFacts) -> Statement {
        let mut outputs = facts.outputs.clone();
        outputs.sort_by(|a, b| a.name.cmp(&b.name));
        let subject = outputs
            .iter()
            .map(|o| ResourceDescriptor {
                name: Some(o.name.clone()),
                uri: None,
                digest: sha256_of(&o.sha256),
                annotations: None,
            })
            .collect();
        let p = &facts.parameters;
        let mut resolved = vec![ResourceDescriptor {
            name: None,
            uri: Some(p.repo_url.clone()),
            digest: BTreeMap::from([("gitCommit".to_owned(), p.commit.clone())]),
            annotations: None,
        }];
        resolved.extend(facts.dependencies.iter().map(|d| ResourceDescriptor {
            name: None,
            uri: Some(d.uri.clone()),
            digest: sha256_of(&d.sha256),
            annotations: Some(Annotations { size: d.size }),
        }));
        Statement {
            statement_type: STATEMENT_TYPE.to_owned(),
            subject,
            predicate_type: PREDICATE_TYPE.to_owned(),
            predicate: Provenance {
                build_definition: BuildDefinition {
                    build_type: BUILD_TYPE.to_owned(),
                    external_parameters: p.clone(),
                    internal_parameters: InternalParameters {
                        build_env: facts.build_env.clone(),
                    },
                    resolved_dependencies: resolved,
                },
                run_details: RunDetails {
                    builder: BuilderRef {
                        id: builder_id(&facts.builder_key),
                    },
                    metadata: Metadata {
                        invocation_id: facts.request_id.clone(),
                    },
                    byproducts: vec![ResourceDescriptor {
                        name: Some(facts.log.name.clone()),
                        uri: None,
                        digest: sha256_of(&facts.log.sha256),
                        annotations: None,
                    }],
                },
            },
        }
    }

    /// The canonical payload bytes (compact JSON, fields in declaration order).
    #[allow(clippy::expect_used)]
    pub fn to_bytes(&self) -> Vec<u8> {
        // Only strings, integers and string-keyed maps: nothing serde_json
        // could fail to encode.
        serde_json::to_vec(self).expect("a statement of strings and integers always encodes")
    }

    /// The subjects as (name, sha256 hex), sorted.
    pub fn subjects(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .subject
            .iter()
            .map(|s| {
                (
                    s.name.clone().unwrap_or_default(),
                    s.digest.get("sha256").cloned().unwrap_or_default(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// DSSE's pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature64 {
    pub keyid: String,
    /// Base64 (standard alphabet, padded) of the 64-byte ed25519 signature.
    pub sig: String,
}

/// A DSSE envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Base64 (standard alphabet, padded) of the statement's bytes.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<Signature64>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Envelope {
    /// Signs `statement` with the key whose public half is `public`;
    /// `sign` returns the ed25519 signature of the bytes it is given.
    pub fn sign(
        statement: &Statement,
        public: &[u8; 32],
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Envelope {
        let payload = statement.to_bytes();
        let sig = sign(&pae(PAYLOAD_TYPE, &payload));
        Envelope {
            payload: b64().encode(&payload),
            payload_type: PAYLOAD_TYPE.to_owned(),
            signatures: vec![Signature64 {
                keyid: hex::encode(public),
                sig: b64().encode(sig),
            }],
        }
    }

    /// One line of an `.intoto.jsonl` file (compact JSON and a newline).
    #[allow(clippy::expect_used)]
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("an envelope of strings always encodes");
        line.push(b'\n');
        line
    }

    pub fn from_json(bytes: &[u8]) -> Result<Envelope, ProvenanceError> {
        serde_json::from_slice(bytes).map_err(ProvenanceError::Envelope)
    }

    /// Checks the signature of `public` over the PAE of the payload, and
    /// that the payload is an in-toto statement of SLSA provenance whose
    /// builder is `public`; returns the statement.
    pub fn verify(&self, public: &[u8; 32]) -> Result<Statement, ProvenanceError> {
        if self.payload_type != PAYLOAD_TYPE {
            return Err(ProvenanceError::PayloadType(self.payload_type.clone()));
        }
        let keyid = hex::encode(public);
        let payload = b64()
            .decode(&self.payload)
            .map_err(|source| ProvenanceError::Base64 {
                what: "payload",
                source,
            })?;
        let key = VerificationKey::try_from(*public)
            .map_err(|_| ProvenanceError::BadKey(keyid.clone()))?;
        let message = pae(&self.payload_type, &payload);
        let mut found = false;
        for s in self.signatures.iter().filter(|s| s.keyid == keyid) {
            found = true;
            let bytes = b64()
                .decode(&s.sig)
                .map_err(|source| ProvenanceError::Base64 {
                    what: "signature",
                    source,
                })?;
            let sig: [u8; 64] = bytes
                .try_into()
                .map_err(|_| ProvenanceError::BadSignature(keyid.clone()))?;
            key.verify(&Signature::from(sig), &message)
                .map_err(|_| ProvenanceError::BadSignature(keyid.clone()))?;
        }
        if !found {
            return Err(ProvenanceError::NoSignature(keyid));
        }
        let statement: Statement =
            serde_json::from_slice(&payload).map_err(ProvenanceError::Statement)?;
        let expect = |field, got: &str, expected: &str| {
            if got == expected {
                Ok(())
            } else {
                Err(ProvenanceError::Unexpected {
                    field,
                    got: got.to_owned(),
                    expected: expected.to_owned(),
                })
            }
        };
        expect("_type", &statement.statement_type, STATEMENT_TYPE)?;
        expect("predicateType", &statement.predicate_type, PREDICATE_TYPE)?;
        expect(
            "runDetails.builder.id",
            &statement.predicate.run_details.builder.id,
            &builder_id(public),
        )?;
        Ok(statement)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ed25519_consensus::SigningKey;

    /// The example of the DSSE specification (protocol.md, "Test vectors").
    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    fn facts() -> BuildFacts {
        BuildFacts {
            request_id: "ab".repeat(32),
            parameters: ExternalParameters {
                ecosystem: "npm".into(),
                name: "left-pad".into(),
                version: "1.3.0".into(),
                repo_url: "https://example.org/left-pad.git".into(),
                commit: "c0".repeat(20),
                recipe: "npm".into(),
            },
            build_env: "sandbox=bwrap node=20".into(),
            builder_key: key().verification_key().to_bytes(),
            outputs: vec![
                Artifact {
                    name: "z.tgz".into(),
                    sha256: "11".repeat(32),
                },
                Artifact {
                    name: "a.tgz".into(),
                    sha256: "22".repeat(32),
                },
            ],
            dependencies: vec![Dependency {
                uri: "npm:/dep/-/dep-1.0.0.tgz".into(),
                sha256: "33".repeat(32),
                size: 42,
            }],
            log: Artifact {
                name: "build.log".into(),
                sha256: "44".repeat(32),
            },
        }
    }

    fn key() -> SigningKey {
        SigningKey::from([7u8; 32])
    }

    fn signed() -> Envelope {
        let k = key();
        Envelope::sign(
            &Statement::new(&facts()),
            &k.verification_key().to_bytes(),
            |m| k.sign(m).to_bytes(),
        )
    }

    #[test]
    fn the_statement_is_slsa_provenance_with_sorted_subjects_and_the_source_first() {
        let s = Statement::new(&facts());
        let json: serde_json::Value = serde_json::from_slice(&s.to_bytes()).unwrap();
        assert_eq!(json["_type"], STATEMENT_TYPE);
        assert_eq!(json["predicateType"], PREDICATE_TYPE);
        assert_eq!(json["subject"][0]["name"], "a.tgz");
        assert_eq!(json["subject"][1]["digest"]["sha256"], "11".repeat(32));
        let def = &json["predicate"]["buildDefinition"];
        assert_eq!(def["buildType"], BUILD_TYPE);
        assert_eq!(
            def["externalParameters"]["repo_url"],
            "https://example.org/left-pad.git"
        );
        assert_eq!(
            def["resolvedDependencies"][0]["digest"]["gitCommit"],
            "c0".repeat(20)
        );
        assert_eq!(def["resolvedDependencies"][1]["annotations"]["size"], 42);
        let run = &json["predicate"]["runDetails"];
        assert_eq!(
            run["builder"]["id"],
            format!(
                "pyrsia:builder:{}",
                hex::encode(key().verification_key().to_bytes())
            )
        );
        assert_eq!(run["byproducts"][0]["digest"]["sha256"], "44".repeat(32));
        assert_eq!(run["metadata"]["invocationId"], "ab".repeat(32));
    }

    #[test]
    fn the_same_build_gives_the_same_bytes() {
        let mut reordered = facts();
        reordered.outputs.reverse();
        assert_eq!(
            Statement::new(&facts()).to_bytes(),
            Statement::new(&reordered).to_bytes()
        );
        assert_eq!(signed(), signed());
    }

    #[test]
    fn a_signed_envelope_verifies_and_round_trips_through_json() {
        let env = signed();
        let line = env.to_json_line();
        assert!(line.ends_with(b"\n") && !line[..line.len() - 1].contains(&b'\n'));
        let back = Envelope::from_json(&line).unwrap();
        let statement = back.verify(&key().verification_key().to_bytes()).unwrap();
        assert_eq!(statement, Statement::new(&facts()));
        assert_eq!(
            statement.subjects(),
            vec![
                ("a.tgz".to_owned(), "22".repeat(32)),
                ("z.tgz".to_owned(), "11".repeat(32))
            ]
        );
    }

    #[test]
    fn altered_envelopes_and_other_keys_are_refused() {
        let public = key().verification_key().to_bytes();
        let other = SigningKey::from([8u8; 32]).verification_key().to_bytes();
        assert!(matches!(
            signed().verify(&other),
            Err(ProvenanceError::NoSignature(_))
        ));

        let mut altered = signed();
        let mut statement = Statement::new(&facts());
        statement.subject[0].digest = sha256_of(&"55".repeat(32));
        altered.payload = b64().encode(statement.to_bytes());
        assert!(matches!(
            altered.verify(&public),
            Err(ProvenanceError::BadSignature(_))
        ));

        let mut retyped = signed();
        retyped.payload_type = "application/json".into();
        assert!(matches!(
            retyped.verify(&public),
            Err(ProvenanceError::PayloadType(_))
        ));

        // A signature by the right key over a statement naming another builder.
        let k = key();
        let mut facts = facts();
        facts.builder_key = other;
        let lying = Envelope::sign(&Statement::new(&facts), &public, |m| k.sign(m).to_bytes());
        assert!(matches!(
            lying.verify(&public),
            Err(ProvenanceError::Unexpected { .. })
        ));
    }
}
