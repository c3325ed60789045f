use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use floq_tests::{Options, TestApp};

fn definition() -> Value {
    json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"ok": true}}}]})
}

async fn ids(app: &TestApp, path: &str, key: &str) -> Vec<String> {
    let (status, body) = app.get(path, key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn non_admins_reach_only_granted_flows_with_404_outside_and_403_below_the_level() {
    let app = TestApp::spawn().await;
    let granted = app.deployed_flow(definition()).await;
    let hidden = app.deployed_flow(definition()).await;
    let run_hidden = app.start_run(&hidden, json!({})).await;
    let executor = app.member(&["flow_executor"]).await;
    app.grant("user", executor.user_id, "flow", &granted, "view").await;
    let key = &executor.api_key;

    assert_eq!(ids(&app, "/api/v1/flows", key).await, vec![granted.clone()]);
    assert_eq!(
        app.get(&format!("/api/v1/flows/{hidden}"), key).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/api/v1/runs/{run_hidden}"), key).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(&format!("/api/v1/flows/{hidden}/runs"), key, json!({}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert!(ids(&app, "/api/v1/runs", key).await.is_empty());

    // It can see the flow, but `view` is below `execute`.
    let (status, body) = app.post(&format!("/api/v1/flows/{granted}/runs"), key, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    app.grant("user", executor.user_id, "flow", &granted, "execute").await;
    let (status, run) = app.post(&format!("/api/v1/flows/{granted}/runs"), key, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run_id = run["run_id"].as_str().unwrap();
    app.wait_run(run_id).await;
    assert_eq!(app.get(&format!("/api/v1/runs/{run_id}"), key).await.0, StatusCode::OK);
    assert_eq!(ids(&app, "/api/v1/runs", key).await, vec![run_id.to_string()]);
    // The role still caps what a grant allows: an executor cannot edit even with an edit grant.
    app.grant("user", executor.user_id, "flow", &granted, "edit").await;
    let (status, _) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{granted}"),
            key,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.teardown().await;
}

#[tokio::test]
async fn grants_reach_users_through_groups_and_flows_through_their_flow_group() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let admin = &app.admin.api_key;
    let editor = app.member(&["flow_editor"]).await;
    let (_, team) = app.post("/api/v1/groups", admin, json!({"name": "team"})).await;
    let team = team["id"].as_str().unwrap().to_string();
    app.post(
        &format!("/api/v1/groups/{team}/members/{}", editor.user_id),
        admin,
        json!({}),
    )
    .await;
    let (status, folder) = app.post("/api/v1/flow-groups", admin, json!({"name": "billing"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let folder = folder["id"].as_str().unwrap().to_string();
    let (status, flow) = app
        .post(
            "/api/v1/flows",
            admin,
            json!({"name": "invoice", "definition": definition(), "group_id": folder}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let flow = flow["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/flows/{flow}");

    assert_eq!(app.get(&path, &editor.api_key).await.0, StatusCode::NOT_FOUND);
    // Group → flow group → flow.
    app.grant("group", &team, "flow_group", &folder, "edit").await;
    assert_eq!(app.get(&path, &editor.api_key).await.0, StatusCode::OK);
    assert_eq!(
        ids(&app, "/api/v1/flow-groups", &editor.api_key).await,
        vec![folder.clone()]
    );
    let (status, _) = app
        .request(Method::PUT, &path, &editor.api_key, Some(json!({"name": "renamed"})))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Leaving the group, or the flow leaving the flow group, closes it again.
    let (status, _) = app
        .request(Method::PUT, &path, admin, Some(json!({"group_id": null})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.get(&path, &editor.api_key).await.0, StatusCode::NOT_FOUND);

    // What a non-admin creates, they can reach.
    let (status, own) = app
        .post(
            "/api/v1/flows",
            &editor.api_key,
            json!({"name": "mine", "definition": definition()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        app.get(
            &format!("/api/v1/flows/{}", own["id"].as_str().unwrap()),
            &editor.api_key
        )
        .await
        .0,
        StatusCode::OK
    );
    app.teardown().await;
}

#[tokio::test]
async fn grants_are_managed_by_admins_and_only_between_entities_of_their_company() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let flow = app.deployed_flow(definition()).await;
    let editor = app.member(&["flow_editor"]).await;
    let globex = app.other_company().await;
    let grant = |subject: String, entity: String| json!({"subject_type": "user", "subject_id": subject, "entity_type": "flow", "entity_id": entity, "level": "view"});

    let body = grant(editor.user_id.to_string(), flow.clone());
    assert_eq!(
        app.post("/api/v1/grants", &editor.api_key, body.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post("/api/v1/grants", &globex.api_key, body.clone()).await.0,
        StatusCode::NOT_FOUND
    );
    let outsider = grant(globex.user_id.to_string(), flow.clone());
    assert_eq!(
        app.post("/api/v1/grants", &app.admin.api_key, outsider).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, bad) = app
        .post("/api/v1/grants", &app.admin.api_key, json!({"subject_type": "robot", "subject_id": editor.user_id, "entity_type": "flow", "entity_id": flow, "level": "own"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad["error"]["details"].as_array().unwrap().len(), 2, "{bad}");

    let (status, created) = app.post("/api/v1/grants", &app.admin.api_key, body).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        app.request(Method::DELETE, &format!("/api/v1/grants/{id}"), &globex.api_key, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.request(
            Method::DELETE,
            &format!("/api/v1/grants/{id}"),
            &app.admin.api_key,
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    app.teardown().await;
}
