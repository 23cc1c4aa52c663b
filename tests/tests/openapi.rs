//! The OpenAPI document says what the server does (issue 9, finding 15).
//! `.ci/schemathesis.sh` checks it broadly with generated requests; these
//! pin each disagreement found, against a real server.

use serde_json::{json, Value};
use warren_tests::accounts::Caller;
use warren_tests::{Server, ServerOptions};

async fn document(server: &Server) -> Value {
    let (status, doc) = server.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    doc
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                found.push((path.clone(), method.to_string(), op.clone()));
            }
        }
    }
    found
}

fn parameter<'d>(op: &'d Value, name: &str) -> &'d Value {
    op["parameters"]
        .as_array()
        .and_then(|params| params.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no parameter {name} in {op}"))
}

/// The schema of a component, following `$ref`s.
fn component<'d>(doc: &'d Value, name: &str) -> &'d Value {
    &doc["components"]["schemas"][name]
}

#[tokio::test]
async fn every_operation_documents_the_errors_it_can_answer() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let doc = document(&server).await;
    let ops = operations(&doc);
    assert!(ops.len() > 25, "{} operations", ops.len());
    for (path, method, op) in &ops {
        let responses = op["responses"].as_object().expect("responses");
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        if secured {
            assert!(responses.contains_key("401"), "{method} {path}: no 401");
        }
        if path.starts_with("/api/v1/admin/") {
            assert!(responses.contains_key("403"), "{method} {path}: no 403");
        }
        if op["requestBody"]["content"]
            .get("application/json")
            .is_some()
        {
            for status in ["400", "415", "422"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: JSON body without {status}"
                );
            }
        }
        let query = op["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
        if query {
            assert!(responses.contains_key("400"), "{method} {path}: no 400");
        }
    }
}

#[tokio::test]
async fn limits_and_rules_are_in_the_schemas() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let doc = document(&server).await;
    let paths = &doc["paths"];

    for (path, method) in [
        ("/api/v1/files", "get"),
        ("/api/v1/files/{path}", "get"),
        ("/api/v1/admin/audit", "get"),
    ] {
        let limit = &parameter(&paths[path][method], "limit")["schema"];
        assert_eq!(limit["minimum"], 1, "{path}: {limit}");
        assert_eq!(limit["maximum"], 1000, "{path}: {limit}");
    }
    let token = component(&doc, "NewToken");
    assert_eq!(token["properties"]["expires_in_seconds"]["minimum"], 1);
    assert_eq!(token["properties"]["name"]["minLength"], 1);

    // Multi-user mode (the default): the login needs a username.
    let login = component(&doc, "LoginRequest");
    let required: Vec<&str> = login["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(required.contains(&"username"), "{login}");
    assert!(required.contains(&"password"), "{login}");
    let create = component(&doc, "CreateUser");
    assert_eq!(create["properties"]["password"]["minLength"], 10);

    // Workspace paths: the rules and the 400 that enforces them.
    for (path, method) in [
        ("/api/v1/files/{path}", "get"),
        ("/api/v1/files/{path}", "put"),
        ("/api/v1/files/{path}", "delete"),
        ("/api/v1/files/{path}", "post"),
    ] {
        let op = &paths[path][method];
        let param = parameter(op, "path");
        assert!(
            param["description"]
                .as_str()
                .is_some_and(|d| d.contains("`..`")),
            "{method} {path}: {param}"
        );
        assert!(param["schema"]["pattern"].is_string(), "{param}");
        assert!(op["responses"].get("400").is_some(), "{method} {path}");
    }
    assert!(
        parameter(&paths["/api/v1/upload/{dir}"]["post"], "dir")["schema"]["pattern"].is_string()
    );

    // A file's bytes are not JSON.
    let file = &paths["/api/v1/files/{path}"]["get"]["responses"]["200"]["content"];
    assert_eq!(file["*/*"]["schema"]["format"], "binary", "{file}");
    let upload = &paths["/api/v1/upload/{dir}"]["post"]["requestBody"]["content"];
    assert!(
        upload["multipart/form-data"]["schema"]["properties"]
            .get("file")
            .is_some(),
        "{upload}"
    );
}

/// Found by schemathesis: these were refused or answered outside the
/// document before.
#[tokio::test]
async fn what_the_document_allows_the_server_accepts() {
    let server = Server::ready(&ServerOptions::workers(1)).await;
    let admin = Caller::admin(&server).await;
    admin.create_user("alice", "alice-password").await;
    let alice = Caller::login(&server, "alice", "alice-password").await;

    // JSON Schema's integer includes 846.0.
    let (status, body) = alice
        .post(
            "/api/v1/me/tokens",
            json!({"name": "ci", "scope": "read", "expires_in_seconds": 846.0}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = alice
        .post(
            "/api/v1/me/tokens",
            json!({"name": "ci", "scope": "read", "expires_in_seconds": 1.5}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let id = alice.user_id();
    let (status, body) = admin
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{id}"),
            Some(json!({"max_sessions": 7.0})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"]["max_sessions"], 7, "{body}");

    // A multipart body without a boundary: a JSON 400, not text/plain.
    let response = alice
        .bearer()
        .request(reqwest::Method::POST, "/api/v1/upload")
        .header("content-type", "multipart/form-data")
        .body("no boundary")
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 400);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.expect("JSON error");
    assert!(body["error"]["code"].is_string(), "{body}");
}
