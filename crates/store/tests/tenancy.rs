//! The store against a real PostgreSQL: every tenant query is scoped by organization, and tests
//! try to cross the line with another organization's ids.

use portcullis_store::orgs::{self, NewAccount, Role};
use portcullis_store::servers::{self, NewServer, ServerSecrets, Tool};
use portcullis_store::testing::fresh_database;
use portcullis_store::{Error, PgPool, agents, policies};
use serde_json::json;
use uuid::Uuid;

async fn account(pool: &PgPool, email: &str, slug: &str) -> (Uuid, Uuid) {
    let (user, org) = orgs::create_account(
        pool,
        &NewAccount {
            email,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            org_slug: slug,
            org_name: slug,
        },
    )
    .await
    .unwrap();
    (user.id, org.id)
}

async fn server(pool: &PgPool, org: Uuid, name: &str) -> Uuid {
    servers::insert(
        pool,
        org,
        &NewServer {
            id: portcullis_store::new_id(),
            name,
            url: Some("https://mcp.example.com/mcp"),
            command: None,
            header_names: &["Authorization".to_owned()],
            secrets: ServerSecrets {
                headers_enc: Some(vec![1, 2, 3]),
                env_enc: None,
            },
            transport_requested: "auto",
            transport: "streamable_http",
            protocol_version: Some("2025-06-18"),
            server_info: Some(&json!({"name": "test", "version": "1"})),
        },
    )
    .await
    .unwrap()
    .id
}

#[tokio::test]
async fn sign_up_creates_an_admin_and_conflicts_are_named() {
    let db = fresh_database().await.unwrap();
    let (user, org) = account(&db.pool, "ada@example.com", "ada").await;
    let memberships = orgs::memberships_of(&db.pool, user).await.unwrap();
    assert_eq!(memberships.len(), 1);
    assert_eq!(memberships[0].organization.id, org);
    assert_eq!(memberships[0].role, Role::Admin);

    let again = orgs::create_account(
        &db.pool,
        &NewAccount {
            email: "ada@example.com",
            password_hash: "x",
            org_slug: "other",
            org_name: "Other",
        },
    )
    .await
    .unwrap_err();
    assert!(again.is_conflict_on("users_email_key"), "{again:?}");
    let slug_taken = orgs::create_account(
        &db.pool,
        &NewAccount {
            email: "bob@example.com",
            password_hash: "x",
            org_slug: "ada",
            org_name: "Ada again",
        },
    )
    .await
    .unwrap_err();
    assert!(
        slug_taken.is_conflict_on("organizations_slug_key"),
        "{slug_taken:?}"
    );
    // The failed sign-up left no user behind (one transaction).
    assert!(
        orgs::user_by_email(&db.pool, "bob@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn membership_is_required_to_see_an_organization() {
    let db = fresh_database().await.unwrap();
    let (ada, _) = account(&db.pool, "ada@example.com", "ada").await;
    let (bob, _) = account(&db.pool, "bob@example.com", "bob").await;
    assert_eq!(
        orgs::membership(&db.pool, "ada", ada).await.unwrap().role,
        Role::Admin
    );
    assert!(matches!(
        orgs::membership(&db.pool, "ada", bob).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        orgs::membership(&db.pool, "nobody", bob).await,
        Err(Error::NotFound)
    ));
}

#[tokio::test]
async fn servers_tools_and_agents_do_not_cross_organizations() {
    let db = fresh_database().await.unwrap();
    let (_, org_a) = account(&db.pool, "ada@example.com", "ada").await;
    let (_, org_b) = account(&db.pool, "bob@example.com", "bob").await;
    let server_a = server(&db.pool, org_a, "github").await;
    let server_b = server(&db.pool, org_b, "github").await;

    // Reads with the wrong organization find nothing.
    assert!(matches!(
        servers::get(&db.pool, org_b, server_a).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        servers::secrets(&db.pool, org_b, server_a).await,
        Err(Error::NotFound)
    ));
    assert_eq!(servers::list(&db.pool, org_a).await.unwrap().len(), 1);
    assert!(matches!(
        servers::delete(&db.pool, org_b, server_a).await,
        Err(Error::NotFound)
    ));
    assert!(servers::get(&db.pool, org_a, server_a).await.is_ok());

    // Writing another organization's catalog is refused and changes nothing.
    let tool = Tool {
        name: "delete_repo".into(),
        definition: json!({"name": "delete_repo"}),
        definition_hash: "h".into(),
        category: "destructive".into(),
        risk: "critical".into(),
        evidence: json!(["name starts with `delete_`"]),
        recommended: json!({"hide": true}),
    };
    assert!(matches!(
        servers::replace_tools(
            &db.pool,
            org_b,
            server_a,
            &Default::default(),
            std::slice::from_ref(&tool)
        )
        .await,
        Err(Error::NotFound)
    ));
    servers::replace_tools(&db.pool, org_a, server_a, &Default::default(), &[tool])
        .await
        .unwrap();
    assert_eq!(
        servers::tools(&db.pool, org_a, server_a)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        servers::tools(&db.pool, org_b, server_a)
            .await
            .unwrap()
            .is_empty()
    );

    // An agent cannot be granted another organization's server.
    let grant_b = [server_b];
    let foreign = agents::insert(
        &db.pool,
        org_a,
        &agents::NewAgent {
            name: "ci",
            key_hash: &[1; 32],
            key_prefix: "pcl_aaaa",
            servers: Some(&grant_b),
            created_by: None,
        },
    )
    .await;
    assert!(matches!(foreign, Err(Error::NotFound)), "{foreign:?}");
    let grant_a = [server_a];
    let agent = agents::insert(
        &db.pool,
        org_a,
        &agents::NewAgent {
            name: "ci",
            key_hash: &[2; 32],
            key_prefix: "pcl_bbbb",
            servers: Some(&grant_a),
            created_by: None,
        },
    )
    .await
    .unwrap();
    assert!(agent.may_reach(server_a));
    assert!(!agent.may_reach(server_b));
    assert!(matches!(
        agents::get(&db.pool, org_b, agent.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        agents::revoke(&db.pool, org_b, agent.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        agents::rotate(&db.pool, org_b, agent.id, &[3; 32], "pcl_cccc").await,
        Err(Error::NotFound)
    ));
    assert!(agents::list(&db.pool, org_b).await.unwrap().is_empty());

    // The key lookup finds the agent with its organization; revocation is visible to it.
    let found = agents::by_key_hash(&db.pool, &[2; 32])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.id, found.org_id), (agent.id, org_a));
    agents::revoke(&db.pool, org_a, agent.id).await.unwrap();
    let revoked = agents::by_key_hash(&db.pool, &[2; 32])
        .await
        .unwrap()
        .unwrap();
    assert!(!revoked.may_reach(server_a));
    assert!(agents::list(&db.pool, org_a).await.unwrap().is_empty());
}

#[tokio::test]
async fn policies_are_versioned_and_scoped() {
    let db = fresh_database().await.unwrap();
    let (user_a, org_a) = account(&db.pool, "ada@example.com", "ada").await;
    let (_, org_b) = account(&db.pool, "bob@example.com", "bob").await;
    let server_a = server(&db.pool, org_a, "github").await;
    let seed = json!({"version": "1", "default": "deny", "hide": ["delete_image_set"]});

    // Another organization cannot write a draft on this server.
    assert!(matches!(
        policies::put_draft(&db.pool, org_b, server_a, None, &seed, None).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        policies::get(&db.pool, org_a, server_a, None).await,
        Err(Error::NotFound)
    ));

    let id = policies::put_draft(&db.pool, org_a, server_a, None, &seed, Some(user_a))
        .await
        .unwrap();
    let policy = policies::get(&db.pool, org_a, server_a, None)
        .await
        .unwrap();
    assert_eq!(policy.draft, seed);
    assert!(policy.published.is_none());
    assert!(policies::all_enforced(&db.pool).await.unwrap().is_empty());

    assert!(matches!(
        policies::publish(&db.pool, org_b, id, None, policies::Mode::Enforced).await,
        Err(Error::NotFound)
    ));
    let v1 = policies::publish(&db.pool, org_a, id, Some(user_a), policies::Mode::Enforced)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let allow = json!({"version": "1", "default": "allow"});
    let same_id = policies::put_draft(&db.pool, org_a, server_a, None, &allow, Some(user_a))
        .await
        .unwrap();
    assert_eq!(same_id, id, "one server policy, updated in place");
    // The draft changed, the enforced version did not.
    let policy = policies::get(&db.pool, org_a, server_a, None)
        .await
        .unwrap();
    assert_eq!(policy.draft, allow);
    assert_eq!(policy.published.unwrap().document, seed);

    let v2 = policies::publish(&db.pool, org_a, id, Some(user_a), policies::Mode::Enforced)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let versions = policies::versions(&db.pool, org_a, id).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert!(
        policies::versions(&db.pool, org_b, id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        policies::version(&db.pool, org_a, id, 1)
            .await
            .unwrap()
            .document,
        seed
    );
    assert!(matches!(
        policies::version(&db.pool, org_b, id, 1).await,
        Err(Error::NotFound)
    ));

    let enforced = policies::all_enforced(&db.pool).await.unwrap();
    assert_eq!(enforced.len(), 1);
    assert_eq!(
        (
            enforced[0].org_id,
            enforced[0].server_id,
            enforced[0].version
        ),
        (org_a, server_a, 2)
    );
}

#[tokio::test]
async fn publishing_notifies_gateways() {
    let db = fresh_database().await.unwrap();
    let (_, org) = account(&db.pool, "ada@example.com", "ada").await;
    let server_id = server(&db.pool, org, "github").await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen("portcullis_policy").await.unwrap();
    let id = policies::put_draft(
        &db.pool,
        org,
        server_id,
        None,
        &json!({"version": "1", "default": "allow"}),
        None,
    )
    .await
    .unwrap();
    policies::publish(&db.pool, org, id, None, policies::Mode::Enforced)
        .await
        .unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    assert_eq!(note.payload(), id.to_string());
    let enforced = policies::enforced(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(enforced.version, 1);
}

#[tokio::test]
async fn grant_changes_notify_gateways() {
    let db = fresh_database().await.unwrap();
    let (_, org) = account(&db.pool, "ada@example.com", "ada").await;
    let server_id = server(&db.pool, org, "github").await;
    let grant = [server_id];
    let agent = agents::insert(
        &db.pool,
        org,
        &agents::NewAgent {
            name: "ci",
            key_hash: &[9; 32],
            key_prefix: "pcl_dddd",
            servers: Some(&grant),
            created_by: None,
        },
    )
    .await
    .unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen("portcullis_agent").await.unwrap();
    sqlx::query("DELETE FROM agent_servers WHERE agent_id = $1")
        .bind(agent.id)
        .execute(&db.pool)
        .await
        .unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    assert_eq!(note.payload(), agent.id.to_string());
}
