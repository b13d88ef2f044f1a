//! The whole loop on real processes: a validator (cometbft + `pyrsia abci`),
//! store sidecars and builders (`pyrsia node service …`), fixture sources
//! served by `git daemon` on 127.0.0.1, and clients using the `pyrsia` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../builder/tests/support/packages.rs"]
mod packages;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use pyrsia_chain::RequestRecord;
use support::fixtures::{Fixture, GitServer};
use support::{eventually, ServicePlan, Testnet};

/// `tx request-build` without waiting; returns the request id and selection.
fn request(net: &Testnet, f: &Fixture) -> (String, Vec<String>) {
    let r = net.request_build(f, &[]).unwrap();
    let id = r["request_id"].as_str().unwrap().to_owned();
    let selected = r["selected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    (id, selected)
}

/// Waits until the request's level is one of `levels`.
async fn wait_level(net: &Testnet, id: &str, levels: &[&str], timeout: Duration) -> RequestRecord {
    eventually(
        timeout,
        &format!("request {id} to be {levels:?}"),
        || async {
            let r = net.request_record(id).await;
            if levels.contains(&r.level.as_str()) {
                Ok(r)
            } else {
                Err(format!(
                    "{} with {} attestations",
                    r.level,
                    r.attestations.len()
                ))
            }
        },
    )
    .await
}

/// Waits until builder `name` has a job for request `id` in `jobs.jsonl`.
async fn wait_job(net: &Testnet, name: &str, id: &str, timeout: Duration) -> serde_json::Value {
    eventually(
        timeout,
        &format!("builder {name} to report its job for {id}"),
        || async {
            let jobs = net.builder_jobs(name);
            let n = jobs.len();
            jobs.into_iter()
                .find(|j| j["request_id"] == id)
                .ok_or(format!("{n} other job(s)"))
        },
    )
    .await
}

/// Builder `name`'s `state.json`.
fn builder_state(net: &Testnet, name: &str) -> serde_json::Value {
    let path = net.builder_dir(name).join("state.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Whether builder `name` is in the middle of building request `id` (of
/// package `header`, as its build log's first line names it): its state
/// counts the job as started and unfinished, and the build's log shows
/// that the build script printed `marker`, i.e. the sandbox is running it.
fn building_now(
    net: &Testnet,
    name: &str,
    id: &str,
    header: &str,
    marker: &str,
) -> Result<(), String> {
    let dir = net.builder_dir(name);
    let state: serde_json::Value = std::fs::read(dir.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("no readable state.json")?;
    if state["starts"][id].as_u64().unwrap_or(0) == 0 {
        return Err(format!("job not started: {state}"));
    }
    let logs = std::fs::read_dir(dir.join("builds"))
        .map_err(|e| format!("no build directory: {e}"))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|text| text.lines().next().is_some_and(|l| l.contains(header)))
        .collect::<Vec<_>>();
    if logs.iter().any(|text| text.contains(marker)) {
        Ok(())
    } else {
        Err(format!(
            "job started, {} build log(s) of {header}, none shows the build running yet",
            logs.len()
        ))
    }
}

fn builder_names(net: &Testnet) -> Vec<String> {
    net.service_names()
        .unwrap()
        .into_iter()
        .filter_map(|n| n.strip_prefix("builder:").map(str::to_owned))
        .collect()
}

/// The builder whose key is `pubkey`.
fn builder_named(net: &Testnet, pubkey: &str) -> String {
    builder_names(net)
        .into_iter()
        .find(|b| net.builder_key(b).unwrap().public().to_string() == pubkey)
        .unwrap()
}

fn fetch(net: &Testnet, f: &Fixture, dir: &std::path::Path) -> std::process::Output {
    net.pyrsia(&[
        "fetch",
        f.ecosystem,
        &f.name,
        &f.version,
        "-o",
        dir.to_str().unwrap(),
        "--api",
        &net.store_api(),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ecosystem_builds_reproducibly_and_a_fresh_client_fetches_it_from_several_builders() {
    let git = GitServer::start().unwrap();
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 3,
        trusted_builders: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    net.start_services().await.unwrap();
    let fixtures = [
        git.script_package("blob", "1.0.0", 6).unwrap(),
        git.npm_package("pyrsia-fixture", "1.0.0").unwrap(),
        git.cargo_package("pyrsia-fixture", "0.1.0").unwrap(),
        git.python_package("pyrsia-fixture", "0.1.0").unwrap(),
    ];
    let ids: Vec<String> = fixtures.iter().map(|f| request(&net, f).0).collect();
    for (f, id) in fixtures.iter().zip(&ids) {
        let r = wait_level(
            &net,
            id,
            &["reproducible", "disputed"],
            Duration::from_secs(600),
        )
        .await;
        assert_eq!(
            r.level.as_str(),
            "reproducible",
            "{} {}: {:#?}",
            f.ecosystem,
            f.name,
            r.attestations
        );
        // Two regular and two trusted suffice; the fifth builder agrees too.
        eventually(
            Duration::from_secs(120),
            &format!("{}: all 5 builders to attest", f.ecosystem),
            || async {
                let r = net.request_record(id).await;
                assert_eq!(r.level.as_str(), "reproducible");
                let n = r.attestations.len();
                (n == 5).then_some(()).ok_or(format!("{n} attestations"))
            },
        )
        .await;
    }

    // A client whose store has never held these outputs fetches them.
    for (f, id) in fixtures.iter().zip(&ids) {
        let dir = net.dir.path().join(format!("fetched-{}", f.ecosystem));
        let out = fetch(&net, f, &dir);
        assert!(
            out.status.success(),
            "fetch {}: {}",
            f.ecosystem,
            String::from_utf8_lossy(&out.stderr)
        );
        let r = net.request_record(id).await;
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for o in &r.attestations[0].outputs {
            let bytes = std::fs::read(dir.join(&o.name)).unwrap();
            assert_eq!(pyrsia_chain::Digest::of(&bytes), o.sha256, "{}", o.name);
            assert_eq!(bytes.len() as u64, o.size);
        }
        if f.ecosystem == "script" {
            // Six stripes, five providers: more than one peer served them.
            let per_file = lines.iter().find(|l| l.get("per_peer").is_some()).unwrap();
            let peers = per_file["per_peer"].as_object().map_or(0, |m| m.len());
            assert!(peers >= 2, "stripes came from {peers} peer(s): {per_file}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_that_embeds_the_time_ends_disputed_and_fetch_refuses_it() {
    let git = GitServer::start().unwrap();
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 3,
        trusted_builders: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    net.start_services().await.unwrap();
    let f = git
        .script_running(
            "clock",
            "1.0.0",
            "date +%s%N > out/result; head -c 16 /dev/urandom >> out/result",
        )
        .unwrap();
    let (id, _) = request(&net, &f);
    let r = wait_level(
        &net,
        &id,
        &["disputed", "reproducible", "quorum_only"],
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(r.level.as_str(), "disputed", "{:#?}", r.attestations);
    let out = fetch(&net, &f, &net.dir.path().join("clock"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disputed"), "{err}");
    assert!(!net.dir.path().join("clock/result").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn unselected_builders_do_not_build_and_a_killed_builder_catches_up_after_restart() {
    let git = GitServer::start().unwrap();
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 4,
        trusted_builders: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    net.start_services().await.unwrap();
    // Slow enough that a builder can be killed in the middle of it. The
    // marker the script prints is not in its text, so a build log holds it
    // only once the sandbox runs the script.
    const RUNNING: &str = "slow build running";
    let slow = |v: &str| {
        git.script_running(
            "slow",
            v,
            "printf 'slow build %s\\n' running; sleep 6; echo slow > out/result",
        )
        .unwrap()
    };
    let first = slow("1.0.0");
    let (id, selected) = request(&net, &first);
    assert_eq!(selected.len(), 3, "builders_per_request is 3 of 4");
    let all: BTreeSet<String> = builder_names(&net).into_iter().collect();
    let chosen: BTreeSet<String> = selected.iter().map(|k| builder_named(&net, k)).collect();
    let idle = all.difference(&chosen).next().unwrap().clone();
    let victim = chosen.iter().next().unwrap().clone();

    // Killed in the middle of that build, not before or after it.
    eventually(
        Duration::from_secs(120),
        &format!("builder {victim} to be running the build of {id}"),
        || async { building_now(&net, &victim, &id, "script slow 1.0.0", RUNNING) },
    )
    .await;
    net.kill_service(&format!("builder:{victim}")).unwrap();
    let state = builder_state(&net, &victim);
    assert_eq!(state["starts"][&id], 1, "killed mid-job: {state}");
    assert!(
        state["pending"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == id.as_str()),
        "the interrupted job stays pending: {state}"
    );
    assert!(
        net.builder_jobs(&victim)
            .iter()
            .all(|j| j["request_id"] != id.as_str()),
        "{victim} finished the job before it was killed"
    );
    let r = wait_level(&net, &id, &["quorum_only"], Duration::from_secs(300)).await;
    assert_eq!(r.attestations.len(), 2, "the two live selected builders");

    // Requests committed while the victim is down.
    let victim_key = net.builder_key(&victim).unwrap().public();
    let mut missed = vec![id.clone()];
    for v in ["1.0.1", "1.0.2"] {
        let (id, selected) = request(&net, &slow(v));
        if selected.contains(&victim_key.to_string()) {
            missed.push(id);
        }
    }
    net.start_service(&format!("builder:{victim}")).unwrap();
    // It resumes the interrupted job and builds the ones it missed.
    for id in &missed {
        eventually(
            Duration::from_secs(300),
            &format!("restarted builder {victim} to attest {id}"),
            || async {
                let r = net.request_record(id).await;
                if r.attestations.iter().any(|a| a.attester == victim_key) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} with {} attestations",
                        r.level,
                        r.attestations.len()
                    ))
                }
            },
        )
        .await;
        let job = wait_job(&net, &victim, id, Duration::from_secs(60)).await;
        assert_eq!(job["outcome"], "attested", "{victim} on {id}: {job}");
    }
    eventually(
        Duration::from_secs(60),
        &format!("builder {victim} to have no job left"),
        || async {
            let state = builder_state(&net, &victim);
            let done = state["pending"].as_array().is_some_and(|p| p.is_empty())
                && state["starts"].as_object().is_some_and(|s| s.is_empty());
            if done {
                Ok(())
            } else {
                Err(state)
            }
        },
    )
    .await;
    // The builder that was not selected for the first request never built it.
    let idle_jobs = net.builder_jobs(&idle);
    assert!(
        idle_jobs.iter().all(|j| j["request_id"] != id.as_str()),
        "{idle} built a request it was not selected for: {idle_jobs:?}"
    );
    let first_record = net.request_record(&id).await;
    let idle_key = net.builder_key(&idle).unwrap().public();
    assert!(first_record
        .attestations
        .iter()
        .all(|a| a.attester != idle_key));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_sources_network_access_and_overlong_builds_fail_clearly_and_are_reported_with_their_class(
) {
    let git = GitServer::start().unwrap();
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 1,
        trusted_builders: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    // A short time limit for this builder, so the overlong build is cut.
    let services = net.nodes[0].home.join("config/services.toml");
    let text = std::fs::read_to_string(&services).unwrap();
    std::fs::write(
        &services,
        text.replace("build_timeout = 900", "build_timeout = 20"),
    )
    .unwrap();
    net.start_services().await.unwrap();

    // The host side of the network probe: reachable from outside the sandbox.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let good = git.npm_package("good", "1.0.0").unwrap();
    let cases = [
        (
            Fixture {
                url: format!("git://127.0.0.1:{}/no-such-repo.git", git.port),
                ..good.clone()
            },
            "repo",
            "source_unreachable",
        ),
        (
            Fixture {
                commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                version: "1.0.1".to_owned(),
                ..good.clone()
            },
            "commit",
            "unknown_commit",
        ),
        (
            git.script_running(
                "netprobe",
                "1.0.0",
                &format!("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=3)'; echo reached > out/result"),
            )
            .unwrap(),
            "",
            "build_failed",
        ),
        (
            git.script_running("forever", "1.0.0", "sleep 600; echo done > out/result")
                .unwrap(),
            "time",
            "timed_out",
        ),
    ];
    let mut ids = Vec::new();
    for (f, _, _) in &cases {
        ids.push(request(&net, f).0);
    }
    let builder = builder_names(&net).remove(0);
    for ((f, expect, class), id) in cases.iter().zip(&ids) {
        let job = wait_job(&net, &builder, id, Duration::from_secs(300)).await;
        assert_eq!(job["outcome"], "failed", "{}: {job}", f.name);
        let error = job["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(error.contains(expect), "{}: {error}", f.name);
        // The failure is on the ledger, with its class, as the builder's answer.
        let r = eventually(
            Duration::from_secs(300),
            &format!("{}: the failure on the ledger", f.name),
            || async {
                let r = net.request_record(id).await;
                if r.failures.is_empty() {
                    Err(format!("{} with no failure", r.level))
                } else {
                    Ok(r)
                }
            },
        )
        .await;
        assert!(r.attestations.is_empty(), "{}: attested anyway", f.name);
        assert_eq!(r.failures.len(), 1, "{}", f.name);
        assert_eq!(r.failures[0].reason.as_str(), *class, "{}", f.name);
        let builder_key = net.builder_key(&builder).unwrap().public();
        assert_eq!(r.failures[0].builder, builder_key);
    }
    drop(listener);
}

/// Real packages with dependencies (npm, a flit_core sdist, a crate, a
/// Maven library with its parent and plugins), from the registries' own
/// archives, reach `reproducible` through every builder's dependency step; each
/// builder's signed provenance lists the dependency with the digest the
/// upstream served.
#[tokio::test(flavor = "multi_thread")]
async fn real_packages_with_dependencies_reach_reproducible() {
    use packages::*;
    let npm_dep = npm_tarball(NPM_DEPENDENCY.0, NPM_DEPENDENCY.1);
    let npm_dir = upstream_dir(std::slice::from_ref(&npm_dep));
    let npm = LocalUpstream::npm(npm_dir.path());
    let backend = pypi_file("flit_core==3.9.0", true, "flit_core-3.9.0-py3-none-any.whl");
    let pypi_dir = upstream_dir(std::slice::from_ref(&backend));
    let pypi = LocalUpstream::pypi(pypi_dir.path());
    let crates = crate_files();
    let crates_dir = upstream_dir(&crates);
    let crates_upstream = LocalUpstream::crates(crates_dir.path());
    let maven_files = maven_project_files();
    let maven_repo = maven_upstream_repository(&maven_files);
    let maven = LocalUpstream::maven(&maven_repo);

    let git = GitServer::start().unwrap();
    let owned = |files: Vec<(String, String, bool)>| -> Vec<(String, String)> {
        files.into_iter().map(|(n, c, _)| (n, c)).collect()
    };
    let publish = |eco: &'static str, name: &str, version: &str, files: &[(String, String)]| {
        let refs: Vec<(&str, String)> =
            files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
        git.publish(eco, name, version, &refs).unwrap()
    };
    let npm_files = owned(npm_source_files(
        &npm_tarball(NPM_PACKAGE.0, NPM_PACKAGE.1),
        &npm.url,
    ));
    let py_files = owned(sdist_files(&pypi_file(
        "tomli==2.0.1",
        false,
        "tomli-2.0.1.tar.gz",
    )));
    let fixtures = [
        (
            publish("npm", NPM_PACKAGE.0, NPM_PACKAGE.1, &npm_files),
            npm_dep.clone(),
            "npm:/is-number/-/is-number-6.0.0.tgz".to_string(),
        ),
        (
            publish("python", "tomli", "2.0.1", &py_files),
            backend.clone(),
            "pypi:/files/flit_core-3.9.0-py3-none-any.whl".to_string(),
        ),
        (
            publish(
                "cargo",
                CRATE_PACKAGE.0,
                CRATE_PACKAGE.1,
                &owned(crate_source_files(&crates[0], true)),
            ),
            crates[1].clone(),
            format!(
                "crates:/crates/{}/{}/download",
                CRATE_DEPENDENCY.0, CRATE_DEPENDENCY.1
            ),
        ),
        (
            publish("maven", &maven_name(), MAVEN_VERSION, &owned(maven_files)),
            maven_repo.join(MAVEN_DEPENDENCY),
            format!("maven:/{MAVEN_DEPENDENCY}"),
        ),
    ];

    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 3,
        trusted_builders: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    net.set_builder_upstreams(&[
        ("npm", &npm.url),
        ("pypi", &pypi.url),
        ("crates", &crates_upstream.url),
        ("maven", &maven.url),
    ])
    .unwrap();
    net.start_services().await.unwrap();

    let mut built = Vec::new();
    for (f, dep_file, dep_uri) in &fixtures {
        let (id, _) = request(&net, f);
        built.push(id.clone());
        let r = wait_level(
            &net,
            &id,
            &["reproducible", "disputed"],
            Duration::from_secs(600),
        )
        .await;
        assert_eq!(
            r.level.as_str(),
            "reproducible",
            "{}: {:#?}",
            f.name,
            r.attestations
        );

        let dir = net.dir.path().join(format!("provenance-{}", f.ecosystem));
        let out = net.provenance(f, &dir, &[]).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = packages::sha256_hex(dep_file);
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let envelope: serde_json::Value =
                serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
            let payload = base64_decode(envelope["payload"].as_str().unwrap());
            let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
                .as_array()
                .unwrap();
            assert!(
                deps.iter()
                    .any(|d| d["uri"] == *dep_uri && d["digest"]["sha256"] == want),
                "{}: {deps:#?}",
                f.name
            );
            checked += 1;
        }
        assert!(checked >= 4, "{}: {checked} provenance files", f.name);
    }

    // The built packages, through the node's gateway, by unchanged clients:
    // the bytes they get are the ones the builders attested.
    net.start_service("gateway:main").unwrap();
    let gateway = net.gateway_url();
    wait_http_ok(&format!("{gateway}/v2/")).await;
    let attested = |id: &str, suffix: &str| -> String {
        let record = futures_block(net.request_record(id));
        record.attestations[0]
            .outputs
            .iter()
            .find(|o| o.name.ends_with(suffix))
            .map(|o| o.sha256.to_string())
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("npm")
        .args(["pack", &format!("{}@{}", NPM_PACKAGE.0, NPM_PACKAGE.1)])
        .arg(format!("--registry={gateway}/npm/"))
        .arg(format!("--cache={}", dir.path().join("cache").display()))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "npm pack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tgz = dir
        .path()
        .join(format!("{}-{}.tgz", NPM_PACKAGE.0, NPM_PACKAGE.1));
    assert_eq!(packages::sha256_hex(&tgz), attested(&built[0], ".tgz"));
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--index-url",
        ])
        .arg(format!("{gateway}/pypi/simple/"))
        .arg("-d")
        .arg(dir.path())
        .arg("tomli==2.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip download: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wheel = dir.path().join("tomli-2.0.1-py3-none-any.whl");
    assert_eq!(packages::sha256_hex(&wheel), attested(&built[1], ".whl"));
}

fn futures_block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

async fn wait_http_ok(url: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("{url} to answer"),
        || async { ureq::get(url).call().map(drop).map_err(|e| e.to_string()) },
    )
    .await
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// A job during which the builder died each time (here: state left by three
/// earlier runs) is dropped with its reason instead of being resumed forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_keeps_killing_the_builder_is_dropped_with_its_reason() {
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 1,
        trusted_builders: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let builder = builder_names(&net).remove(0);
    let id = "ab".repeat(32);
    let dir = net.builder_dir(&builder);
    std::fs::create_dir_all(&dir).unwrap();
    let state = serde_json::json!({"next_height": 1, "pending": [id], "starts": {&id: 3}});
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    net.start_services().await.unwrap();

    let job = wait_job(&net, &builder, &id, Duration::from_secs(120)).await;
    assert_eq!(job["outcome"], "dropped", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("started 3 times"),
        "{job}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert!(state["pending"].as_array().unwrap().is_empty(), "{state}");
    assert!(state["starts"].as_object().unwrap().is_empty(), "{state}");
}
