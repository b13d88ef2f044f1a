//! The npm, cargo and python recipes with the host's real toolchains: each
//! fixture package builds twice to identical bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use builder::BuildError;
use common::*;

const NPM_PACKAGE: &str = r#"{
  "name": "tiny-pad",
  "version": "1.0.0",
  "description": "pads",
  "main": "index.js",
  "license": "MIT"
}
"#;

#[test]
fn npm_pack_is_reproducible() {
    let server = GitServer::start();
    let (url, commit) = server.repo(
        "tiny-pad",
        &[
            ("package.json", NPM_PACKAGE, false),
            (
                "index.js",
                "module.exports = (s, n) => String(s).padStart(n);\n",
                false,
            ),
            ("lib/util.js", "module.exports = 1;\n", false),
        ],
    );
    let outputs = build_twice_identical(&spec("npm", "tiny-pad", "1.0.0", &url, &commit));
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].0, "tiny-pad-1.0.0.tgz");
}

#[test]
fn npm_output_must_match_the_requested_version() {
    let server = GitServer::start();
    let (url, commit) = server.repo(
        "tiny-pad",
        &[
            ("package.json", NPM_PACKAGE, false),
            ("index.js", "\n", false),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    match builder::build(&spec("npm", "tiny-pad", "2.0.0", &url, &commit), &cfg) {
        Err(BuildError::OutputMismatch { name, reason, .. }) => {
            assert_eq!(name, "tiny-pad-1.0.0.tgz");
            assert!(reason.contains("tiny-pad@1.0.0"), "{reason}");
        }
        other => panic!("expected OutputMismatch, got {other:?}"),
    }
}

#[test]
fn cargo_package_is_reproducible() {
    let server = GitServer::start();
    let (url, commit) = server.repo(
        "tiny-crate",
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"tiny-crate\"\nversion = \"0.1.0\"\nedition = \"2021\"\ndescription = \"tiny\"\nlicense = \"MIT\"\n",
                false,
            ),
            (
                "src/lib.rs",
                "pub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n",
                false,
            ),
        ],
    );
    let outputs = build_twice_identical(&spec("cargo", "tiny-crate", "0.1.0", &url, &commit));
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["tiny-crate-0.1.0.crate"]);
}

#[test]
fn python_sdist_and_wheel_are_reproducible() {
    let server = GitServer::start();
    let (url, commit) = server.repo(
        "tiny-py",
        &[
            (
                "pyproject.toml",
                "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"tiny-py\"\nversion = \"1.0.0\"\ndescription = \"tiny\"\n\n[tool.setuptools]\npy-modules = [\"tiny_py\"]\n",
                false,
            ),
            ("tiny_py.py", "def hello():\n    return 'hello'\n", false),
        ],
    );
    let outputs = build_twice_identical(&spec("python", "tiny-py", "1.0.0", &url, &commit));
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("1.0.0.tar.gz")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with("-1.0.0-py3-none-any.whl")),
        "{names:?}"
    );
}
