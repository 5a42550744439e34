//! Activity events are written in batches and read back per organization.

use chrono::Utc;
use portcullis_store::activity::{self, NewEvent};
use portcullis_store::orgs::{self, NewAccount};
use portcullis_store::testing::fresh_database;
use uuid::Uuid;

fn event(org_id: Uuid, tool: Option<&str>, keys: &[&str], decision: &str) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        org_id,
        at: Utc::now(),
        server_id: Some(Uuid::new_v4()),
        agent_id: None,
        agent_name: Some("ci".into()),
        session: None,
        method: "tools/call".into(),
        tool: tool.map(str::to_owned),
        argument_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        arguments: None,
        decision: decision.into(),
        rule: Some("/default".into()),
        reason: None,
        policy_id: None,
        policy_version: Some(3),
        latency_ms: Some(1.5),
        upstream_status: None,
        policy_agent_id: None,
        shadow: None,
    }
}

#[tokio::test]
async fn a_batch_is_written_in_one_statement_and_read_back_per_organization() {
    let db = fresh_database().await.unwrap();
    let mut orgs_ids = Vec::new();
    for slug in ["a", "b"] {
        let (_, org) = orgs::create_account(
            &db.pool,
            &NewAccount {
                email: &format!("{slug}@example.com"),
                password_hash: "x",
                org_slug: slug,
                org_name: slug,
            },
        )
        .await
        .unwrap();
        orgs_ids.push(org.id);
    }
    let batch = vec![
        event(
            orgs_ids[0],
            Some("echo"),
            &["text", "weird,\"key\""],
            "allow",
        ),
        event(orgs_ids[0], None, &[], "deny"),
        event(orgs_ids[1], Some("delete_repo"), &["name"], "hidden"),
    ];
    activity::insert_batch(&db.pool, &batch).await.unwrap();
    // Writing the same batch again (a retry) adds nothing.
    activity::insert_batch(&db.pool, &batch).await.unwrap();

    let a = activity::recent(&db.pool, orgs_ids[0], 10).await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].decision, "deny", "newest first");
    assert!(a[0].argument_keys.is_empty() && a[0].tool.is_none());
    assert_eq!(a[1].argument_keys, ["text", "weird,\"key\""]);
    assert_eq!(a[1].policy_version, Some(3));
    let b = activity::recent(&db.pool, orgs_ids[1], 10).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].tool.as_deref(), Some("delete_repo"));
    assert_eq!(b[0].argument_keys, ["name"]);

    // A batch without a single key; rows without keys first and last; keys PostgreSQL's array
    // text would otherwise read differently.
    activity::insert_batch(&db.pool, &[event(orgs_ids[1], Some("ping"), &[], "allow")])
        .await
        .unwrap();
    let odd = [
        "NULL",
        "{a,b}",
        "",
        " padded ",
        "back\\slash\\",
        "quote\"",
        "ünï,cödé",
    ];
    activity::insert_batch(
        &db.pool,
        &[
            event(orgs_ids[1], Some("first"), &[], "allow"),
            event(orgs_ids[1], Some("x"), &odd, "allow"),
            event(orgs_ids[1], Some("last"), &[], "allow"),
        ],
    )
    .await
    .unwrap();
    let b = activity::recent(&db.pool, orgs_ids[1], 10).await.unwrap();
    let keys_of = |tool: &str| {
        b.iter()
            .find(|e| e.tool.as_deref() == Some(tool))
            .map(|e| e.argument_keys.clone())
            .unwrap()
    };
    assert_eq!(keys_of("x"), odd);
    assert!(keys_of("first").is_empty() && keys_of("last").is_empty());
    assert!(keys_of("ping").is_empty());
}
