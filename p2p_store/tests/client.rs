#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The typed control-API client against in-process nodes and their APIs:
//! answers come back as the store's own types, failures carry the HTTP
//! status and the store's message.

mod common;

use std::time::Duration;

use common::*;
use hyper::StatusCode;
use p2p_store::client::{ClientError, Layout, StoreClient};
use p2p_store::Phase;

const TOKEN: &str = "00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_puts_fetches_reads_and_reports_the_stores_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let seeder = start(&tmp.path().join("a"), &[], |c| c.stripe_size = 64 * 1024).await;
    let leecher = start(&tmp.path().join("b"), &[&seeder], |_| {}).await;
    wait_connected(&leecher, &[&seeder]).await;
    let serve = |node: &p2p_store::Node| {
        let (addr, server) =
            p2p_store::api::bind(node.clone(), "127.0.0.1:0".parse().unwrap(), TOKEN).unwrap();
        tokio::spawn(server);
        format!("http://{addr}/")
    };
    let (a_url, b_url) = (serve(&seeder), serve(&leecher));

    // A token file is read at each call; the token file is the store's format.
    let token_file = tmp.path().join("api-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let a = StoreClient::new(&a_url).with_token_file(&token_file);
    let b = StoreClient::new(&b_url).with_token(TOKEN);

    let file = tmp.path().join("f.bin");
    make_file(&file, 300 * 1024 + 17, 7);
    let put = a.put_file(&file, true, None).await.unwrap();
    assert_eq!((put.size, put.stripe_size), (300 * 1024 + 17, 64 * 1024));

    let status = a.status().await.unwrap();
    assert_eq!(status.peer_id, seeder.peer_id().to_string());
    assert!(status
        .artifacts
        .iter()
        .any(|x| x.sha256 == put.sha256 && x.pinned));

    let layout = Layout {
        stripe_root: put.stripe_root.clone(),
        size: Some(put.size),
        stripe_size: Some(put.stripe_size),
        pin: false,
    };
    b.start_fetch(&put.sha256, &layout).await.unwrap();
    let done = eventually(Duration::from_secs(60), "the fetch to finish", || async {
        let p = b.fetch_progress(&put.sha256).await.unwrap();
        match p.phase {
            Phase::Done => Ok(p),
            _ => Err(p),
        }
    })
    .await;
    assert_eq!(done.stripes_total, 5);
    let bytes = b
        .artifact_bytes(&put.sha256, &layout, put.size)
        .await
        .unwrap();
    assert_eq!(bytes, std::fs::read(&file).unwrap());
    // Over the limit: refused, not read into memory.
    assert!(matches!(
        b.artifact_bytes(&put.sha256, &layout, 1000).await,
        Err(ClientError::TooLarge { .. })
    ));
    b.set_pin(&put.sha256, true).await.unwrap();

    // Errors: the status and the store's own message.
    let reader = StoreClient::new(&a_url);
    let e = reader.set_pin(&put.sha256, false).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED), "{e}");
    assert!(e.to_string().contains("--token-file"), "{e}");
    let e = a.fetch_progress(&"ab".repeat(32)).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND), "{e}");
    assert!(
        e.to_string().contains("no download of this artifact"),
        "{e}"
    );
    let bad = Layout {
        stripe_root: "nothex".into(),
        ..Layout::default()
    };
    let e = b.start_fetch(&put.sha256, &bad).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST), "{e}");
    assert!(e.to_string().contains("stripe_root must be"), "{e}");
    // A store that is not there.
    let gone = StoreClient::new("http://127.0.0.1:1");
    assert!(matches!(
        gone.status().await,
        Err(ClientError::Unreachable { .. })
    ));
    // A token file that is not a token.
    std::fs::write(&token_file, "short").unwrap();
    assert!(matches!(
        a.set_pin(&put.sha256, true).await,
        Err(ClientError::Token(_))
    ));
}
