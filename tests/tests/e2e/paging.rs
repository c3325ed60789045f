//! Every list endpoint answers in pages (`?limit=&cursor=` → `{items,
//! next_cursor}`): paging through returns each item exactly once, never
//! another company's, and `limit` and `cursor` are checked.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use floq_tests::{Options, TestApp};

fn no_services() -> Options {
    Options {
        worker: false,
        scheduler: false,
    }
}

/// Pages through `path` `limit` at a time; every item's id, in order, and how many pages it took.
async fn page_through(app: &TestApp, path: &str, key: &str, limit: usize) -> (Vec<String>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1..100 {
        let url = match &cursor {
            None => format!("{path}{sep}limit={limit}"),
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
        };
        let (status, body) = app.get(&url, key).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        let items = body["items"].as_array().unwrap_or_else(|| panic!("{url}: {body}"));
        assert!(items.len() <= limit, "{url}: a page holds at most `limit` items");
        ids.extend(items.iter().map(|i| i["id"].as_str().expect("item id").to_string()));
        match body["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), limit, "{url}: only a full page hands out a cursor");
                cursor = Some(next.to_string());
            }
            None => return (ids, pages),
        }
    }
    panic!("{path} never ended");
}

/// Everything a list shows at once (it is small enough here for one page).
async fn one_page(app: &TestApp, path: &str, key: &str) -> Vec<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, body) = app.get(&format!("{path}{sep}limit=200"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["next_cursor"].is_null(), "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn id(body: &Value) -> String {
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {body}"))
        .to_string()
}

/// Creates `n` items of every listed kind in the company of `key` (whose
/// flow is `flow`) and returns (list path, ids created) per list.
async fn fill(
    app: &TestApp,
    key: &str,
    company: Uuid,
    admin: Uuid,
    flow: &str,
    n: usize,
) -> Vec<(String, Vec<String>)> {
    let mut made: Vec<(String, Vec<String>)> = Vec::new();
    let tag = Uuid::now_v7().simple().to_string();
    let mut add = |path: &str, id: String| match made.iter_mut().find(|(p, _)| p == path) {
        Some((_, ids)) => ids.push(id),
        None => made.push((path.to_string(), vec![id])),
    };
    for i in 0..n {
        // Names out of creation order, so name order and id order differ.
        let name = format!("{}-{tag}-{i}", (b'z' - i as u8) as char);
        let (s, b) = app
            .post(
                "/api/v1/credentials",
                key,
                json!({"name": name, "type": "http_header", "data": {"name": "X-Key", "value": "0123456789abcdef"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        add("/api/v1/credentials", id(&b));
        let (s, b) = app.post("/api/v1/groups", key, json!({"name": name})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        add("/api/v1/groups", id(&b));
        let (s, b) = app.post("/api/v1/flow-groups", key, json!({"name": name})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        add("/api/v1/flow-groups", id(&b));
        let (s, b) = app
            .request(
                Method::PUT,
                &format!("/api/v1/kv/{name}"),
                key,
                Some(json!({"value": i})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        add("/api/v1/kv", id(&b));
        let (s, b) = app
            .post("/api/v1/api-keys", key, json!({"name": name, "scopes": ["api"]}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        add("/api/v1/api-keys", id(&b));
        let (s, b) = app
            .post(
                &format!("/api/v1/flows/{flow}/schedules"),
                key,
                json!({"cron": format!("0 {i} 1 1 *")}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        add(&format!("/api/v1/flows/{flow}/schedules"), id(&b));
        let member = floq_api::admin::add_member(
            &app.pool,
            &app.config,
            company,
            &format!("{name}@paging.test"),
            &["viewer"],
        )
        .await
        .expect("add member");
        add("/api/v1/users", member.user_id.to_string());
        let (s, b) = app
            .post(
                "/api/v1/grants",
                key,
                json!({"subject_type": "user", "subject_id": member.user_id, "entity_type": "flow",
                       "entity_id": flow, "level": "view"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        add("/api/v1/grants", id(&b));
        // No mail in this test: a pending invitation as the API would store it.
        let invitation = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO account_tokens (id, token_hash, purpose, email, company_id, roles, invited_by, expires_at)
             VALUES ($1, $2, 'invitation', $3, $4, '{viewer}', $5, now() + interval '1 day')",
        )
        .bind(invitation)
        .bind(invitation.as_bytes().to_vec())
        .bind(format!("{name}@invited.test"))
        .bind(company)
        .bind(admin)
        .execute(&app.pool)
        .await
        .unwrap();
        add("/api/v1/invitations", invitation.to_string());
    }
    made
}

#[tokio::test]
async fn paging_through_every_list_returns_each_item_once_and_never_another_companys() {
    let app = TestApp::spawn_with(no_services()).await;
    let admin = app.admin.api_key.clone();
    let globex = app.other_company().await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let their_flow = app
        .deployed_flow_as(&globex.api_key, json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let ours = fill(&app, &admin, app.admin.company_id, app.admin.user_id, &flow, 5).await;
    let theirs = fill(&app, &globex.api_key, globex.company_id, globex.user_id, &their_flow, 2).await;
    let their_ids: HashSet<String> = theirs.iter().flat_map(|(_, ids)| ids.iter().cloned()).collect();
    assert_eq!(ours.len(), 9, "every list endpoint is covered");

    for (path, created) in &ours {
        let (paged, pages) = page_through(&app, path, &admin, 2).await;
        let unique: HashSet<&String> = paged.iter().collect();
        assert_eq!(unique.len(), paged.len(), "{path}: an item came twice: {paged:?}");
        assert!(pages >= 3, "{path}: 5+ items at 2 a page take 3+ pages, took {pages}");
        for id in created {
            assert!(unique.contains(id), "{path}: {id} was never listed");
        }
        assert!(
            paged.iter().all(|id| !their_ids.contains(id)),
            "{path}: another company's item appeared"
        );
        assert_eq!(
            paged,
            one_page(&app, path, &admin).await,
            "{path}: paging yields the same items in the same order as one page"
        );
    }
    // The other company pages through only its own.
    let our_ids: HashSet<String> = ours.iter().flat_map(|(_, ids)| ids.iter().cloned()).collect();
    for (path, created) in &theirs {
        let (paged, _) = page_through(&app, path, &globex.api_key, 1).await;
        assert!(created.iter().all(|id| paged.contains(id)), "{path}");
        assert!(
            paged.iter().all(|id| !our_ids.contains(id)),
            "{path}: another company's item appeared"
        );
    }
    // Another company's flow's schedules are not found at all.
    assert_eq!(
        app.get(&format!("/api/v1/flows/{their_flow}/schedules?limit=1"), &admin)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    app.teardown().await;
}

#[tokio::test]
async fn list_endpoints_refuse_a_bad_limit_or_cursor_naming_it() {
    let app = TestApp::spawn_with(no_services()).await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let lists = [
        "/api/v1/credentials".to_string(),
        "/api/v1/grants".into(),
        "/api/v1/groups".into(),
        "/api/v1/flow-groups".into(),
        "/api/v1/kv".into(),
        "/api/v1/users".into(),
        "/api/v1/api-keys".into(),
        "/api/v1/invitations".into(),
        format!("/api/v1/flows/{flow}/schedules"),
    ];
    for path in &lists {
        for (query, field) in [
            ("limit=201", "limit"),
            ("limit=0", "limit"),
            ("limit=many", "limit"),
            ("cursor=not-a-cursor", "cursor"),
        ] {
            let (status, body) = app.get(&format!("{path}?{query}"), &admin).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}?{query}: {body}");
            assert_eq!(
                body["error"],
                json!({"code": "validation_failed", "message": body["error"]["message"],
                       "details": [{"field": field, "message": body["error"]["details"][0]["message"]}],
                       "request_id": body["error"]["request_id"]}),
                "{path}?{query}"
            );
        }
        let (status, body) = app.get(&format!("{path}?limit=200"), &admin).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    app.teardown().await;
}
