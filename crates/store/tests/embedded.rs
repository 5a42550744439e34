//! The embedded default cluster: created from the machine's PostgreSQL binaries in a data
//! directory, run as the unprivileged `postgres` user when we are root, reused when already
//! running, stopped on request.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use portcullis_store::embedded::EmbeddedPostgres;
use sqlx::{ConnectOptions, Connection};

#[tokio::test]
async fn creates_starts_reuses_and_stops_a_private_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    // tempdir is private to us; the cluster's owner must be able to enter it.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("data").join("postgres");

    let cluster = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
            .await
            .unwrap()
            .unwrap()
    };
    cluster.ensure_database("portcullis").await.unwrap();
    cluster.ensure_database("portcullis").await.unwrap(); // idempotent

    let mut conn = cluster
        .connect_options("portcullis")
        .connect()
        .await
        .unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    // No TCP: the cluster listens on its private socket only.
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(listen, "");
    conn.close().await.unwrap();

    // As root, the files belong to the postgres user, never to root.
    let owner = std::fs::metadata(cluster.pgdata()).unwrap().uid();
    match cluster.run_as() {
        Some(account) => assert_eq!(owner, account.uid),
        None => assert_ne!(owner, 0),
    }

    // A second start attaches to the running cluster and does not stop it when dropped.
    let again = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
            .await
            .unwrap()
            .unwrap()
    };
    drop(again);
    let conn = cluster
        .connect_options("portcullis")
        .connect()
        .await
        .unwrap();
    conn.close().await.unwrap();

    let options = cluster.connect_options("portcullis");
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(options.connect().await.is_err(), "the cluster is stopped");
}

#[test]
fn finds_the_machine_binaries() {
    let dir = portcullis_store::embedded::find_bin_dir().unwrap();
    assert!(dir.join("initdb").is_file(), "{}", dir.display());
}
