//! HTTP source credentials on the real binary: whichever way it comes (`auth_env`, `auth_file`,
//! `auth_secret`), a credential's value appears in no log line, no `bqsync config` output and no dead
//! letter; a Secret Manager secret that cannot be read is named, never shown.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use common::Project;

const TOKEN: &str = "Bearer TOPSECRET-7f3a";

async fn users(headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
        return (axum::http::StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    // One good user, and one record that is not an object (a dead letter).
    axum::Json(serde_json::json!({"users": [
        {"id": "u-1", "email": "a@x.test", "status": "active", "modifiedTime": "2025-01-01T00:00:00Z"},
        5
    ]}))
    .into_response()
}

fn serve(runtime: &tokio::runtime::Runtime) -> u16 {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/users", axum::routing::get(users));
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn project(port: u16, auth: &str) -> Project {
    Project::new(&format!(
        "[[sources.http]]\nname = \"idp\"\nurl = \"http://127.0.0.1:{port}/users\"\ntable = \"idp_users\"\n{auth}\n\
         cursor_param = \"from\"\ncursor_field = \"modifiedTime\"\nrecords_path = \"users\"\n\
         columns = {{ id = \"user_id\", modifiedTime = \"modified_at\" }}\n"
    ))
}

/// Runs one-shot with debug logs; returns (success, everything printed).
fn run(project: &Project, env: &[(&str, &str)]) -> (bool, String) {
    let output = project
        .command(&["run", "--until-drained"])
        .envs(env.iter().copied())
        .env("BQSYNC_LOG", "debug")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn assert_nowhere(project: &Project, printed: &str, env: &[(&str, &str)]) {
    assert!(!printed.contains("TOPSECRET"), "a log line shows the credential");
    let config = project.command(&["config"]).envs(env.iter().copied()).output().unwrap();
    assert!(!String::from_utf8_lossy(&config.stdout).contains("TOPSECRET"), "bqsync config shows the credential");
    let dead: String = project
        .warehouse()
        .prepare("SELECT CAST(message_bytes AS VARCHAR) || coalesce(detail, '') || CAST(attributes AS VARCHAR) FROM dead_letters")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!dead.is_empty(), "the non-object record was dead-lettered");
    assert!(!dead.contains("TOPSECRET"), "a dead letter carries the credential");
}

#[test]
fn credentials_from_the_environment_or_a_file_never_show() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = serve(&runtime);

    let from_env = project(port, "auth_env = \"IDP_TOKEN\"");
    let env = [("IDP_TOKEN", TOKEN)];
    let (ok, printed) = run(&from_env, &env);
    assert!(ok, "{printed}");
    assert_eq!(from_env.query_i64("SELECT count(*) FROM idp_users"), 1);
    assert_nowhere(&from_env, &printed, &env);

    let from_file = project(port, "auth_file = \"token.txt\"");
    std::fs::write(from_file.path("token.txt"), format!("{TOKEN}\n")).unwrap();
    let (ok, printed) = run(&from_file, &[]);
    assert!(ok, "{printed}");
    assert_nowhere(&from_file, &printed, &[]);

    // A wrong credential: refused at once, named by where it comes from, its value not shown.
    let (ok, printed) = run(&from_env, &[("IDP_TOKEN", "Bearer TOPSECRET-wrong")]);
    assert!(!ok && printed.contains("refused the credential") && !printed.contains("TOPSECRET"), "{printed}");
}

#[test]
fn a_secret_manager_secret_that_cannot_be_read_is_named_never_shown() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = serve(&runtime);
    let name = "projects/p-1/secrets/idp-token/versions/latest";
    let project = project(port, &format!("auth_secret = \"{name}\""));
    // No Google credentials here: reading the secret fails, and says which secret.
    let missing = project.path("no-such-credentials.json");
    let env = [("GOOGLE_APPLICATION_CREDENTIALS", missing.to_str().unwrap())];
    let (ok, printed) = run(&project, &env);
    assert!(!ok && printed.contains(name), "{printed}");
    let config = project.command(&["config"]).output().unwrap();
    assert!(String::from_utf8_lossy(&config.stdout).contains(name), "config names the secret, as written");

    let both = common::Project::new(&format!(
        "[[sources.http]]\nname = \"idp\"\nurl = \"http://127.0.0.1:{port}/users\"\ntable = \"idp_users\"\nauth_env = \"X\"\nauth_secret = \"{name}\"\ncursor_param = \"from\"\ncursor_field = \"modifiedTime\"\n"
    ));
    let (ok, printed) = run(&both, &[]);
    assert!(!ok && printed.contains("set one of auth_env, auth_file and auth_secret"), "{printed}");
}
