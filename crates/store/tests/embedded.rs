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

    let cluster = start(&dir, false).await.unwrap();
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
    let again = start(&dir, false).await.unwrap();
    drop(again);
    let conn = cluster
        .connect_options("portcullis")
        .connect()
        .await
        .unwrap();
    conn.close().await.unwrap();

    let options = cluster.connect_options("portcullis");
    stop(cluster).await;
    assert!(options.connect().await.is_err(), "the cluster is stopped");
}

#[test]
fn finds_the_machine_binaries() {
    let dir = portcullis_store::embedded::find_bin_dir().unwrap();
    assert!(dir.join("initdb").is_file(), "{}", dir.display());
}

/// A private directory the cluster's owner (the `postgres` user when we are root) can enter.
fn cluster_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("postgres");
    (tmp, dir)
}

async fn start(dir: &std::path::Path, disposable: bool) -> Result<EmbeddedPostgres, String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        if disposable {
            EmbeddedPostgres::start_disposable(&dir)
        } else {
            EmbeddedPostgres::start(&dir)
        }
    })
    .await
    .unwrap()
    .map_err(|e| e.to_string())
}

async fn stop(cluster: EmbeddedPostgres) {
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
}

/// Kills the postmaster as a crash or a restored machine snapshot would: no shutdown, its pid
/// file left behind.
fn kill_postmaster(cluster: &EmbeddedPostgres) {
    let pid_file = std::fs::read_to_string(cluster.pgdata().join("postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap().trim().to_owned();
    // Its children too: they would otherwise hold the shared memory the next start needs.
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .unwrap();
    let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // The postmaster first, and it must die; a child may have ended on its own meanwhile.
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(status.success(), "SIGKILL to the postmaster {pid}");
    if !pids.is_empty() {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(std::process::Stdio::null())
            .status();
    }
    pids.push(pid);
    // Killed processes disappear once reaped (a zombie still counts as running for pg_ctl):
    // poll, bounded.
    for _ in 0..1000 {
        if !pids
            .iter()
            .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the cluster's processes {pids:?} survived SIGKILL");
}

#[tokio::test]
async fn a_cluster_killed_without_shutdown_recovers_its_committed_data_on_the_next_start() {
    let (_tmp, dir) = cluster_dir();
    let cluster = start(&dir, false).await.unwrap();
    cluster.ensure_database("portcullis").await.unwrap();
    let options = cluster.connect_options("portcullis");
    let mut conn = options.connect().await.unwrap();
    sqlx::query("CREATE TABLE kept (v text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('before the crash')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    kill_postmaster(&cluster);
    // The stale pid file is there; the next start replays the log and serves again.
    assert!(cluster.pgdata().join("postmaster.pid").exists());
    cluster.detach();
    let cluster = start(&dir, false).await.unwrap();
    let mut conn = options.connect().await.unwrap();
    let kept: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, "before the crash");
    conn.close().await.unwrap();
    stop(cluster).await;
}

#[tokio::test]
async fn a_damaged_disposable_cluster_is_created_again_and_a_real_one_is_never_deleted() {
    let (_tmp, dir) = cluster_dir();
    let cluster = start(&dir, true).await.unwrap();
    cluster.ensure_database("scratch").await.unwrap();
    let pgdata = cluster.pgdata().to_owned();
    stop(cluster).await;
    // Damage it: without its control file PostgreSQL cannot start.
    std::fs::remove_file(pgdata.join("global").join("pg_control")).unwrap();

    // The real database's start fails, says why, and leaves the files alone.
    let error = start(&dir, false).await.unwrap_err();
    assert!(error.contains("pg_ctl start failed"), "{error}");
    assert!(pgdata.join("PG_VERSION").exists());

    // The disposable one starts over, empty.
    let cluster = start(&dir, true).await.unwrap();
    let mut conn = cluster.connect_options("postgres").connect().await.unwrap();
    let scratch: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'scratch')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(!scratch, "a new cluster");
    let checkpoint: String = sqlx::query_scalar("SHOW checkpoint_timeout")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(checkpoint, "1min", "disposable settings applied");
    conn.close().await.unwrap();
    stop(cluster).await;
}
