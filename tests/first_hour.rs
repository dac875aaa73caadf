//! What a newcomer runs into in the first hour, on the real binary: the mistakes that used to pass
//! silently now fail loudly or are reported, settings that mean nothing are refused, logs redirected
//! to a file are plain text, and the counters say what happened.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use std::process::{Command, Output, Stdio};

use common::{atom_line, Project};

/// Runs `bqsync ARGS` to completion with `env`.
fn bqsync(project: &Project, args: &[&str], env: &[(&str, &str)]) -> Output {
    project.command(args).envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `run --until-drained`, asserted to succeed; its JSON report and its log.
fn run_once(project: &Project, env: &[(&str, &str)]) -> (serde_json::Value, String) {
    let output = bqsync(project, &["run", "--until-drained"], env);
    let log = text(&output.stderr);
    assert!(output.status.success(), "run failed: {log}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {log}"));
    (report["report"].clone(), log)
}

#[test]
fn a_missing_source_root_is_refused_and_not_created() {
    let project = Project::new("[[sources.jsonl]]\nroot = \"inboxx\"\n");
    let output = bqsync(&project, &["run", "--until-drained"], &[]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("inboxx does not exist") && stderr.contains("create_root = true"), "{stderr}");
    assert!(!project.path("inboxx").exists(), "bqsync must not create a folder the user mistyped");

    let project = Project::new("[[sources.jsonl]]\nroot = \"made\"\ncreate_root = true\n");
    let output = bqsync(&project, &["run", "--until-drained"], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(project.path("made").is_dir(), "create_root = true creates it");
}

#[test]
fn relative_paths_follow_the_config_file_not_the_current_folder() {
    let project = Project::new("");
    project.append("inbox/atoms/a.jsonl", atom_line("c-1", 1).as_bytes());
    let elsewhere = tempfile::tempdir().unwrap();
    let config = project.path("bqsync.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_bqsync"))
        .args(["--config", config.to_str().unwrap(), "run", "--until-drained"])
        .current_dir(elsewhere.path())
        .env("BQSYNC_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 1);
    let stray: Vec<_> = std::fs::read_dir(elsewhere.path()).unwrap().collect();
    assert!(stray.is_empty(), "nothing is created in the current folder: {stray:?}");
}

#[test]
fn partial_last_lines_and_unrouted_files_are_reported_not_silent() {
    let project = Project::new("");
    let good = atom_line("p-1", 1);
    let partial = atom_line("p-2", 2);
    let partial = partial.trim_end();
    project.append("inbox/atoms/a.jsonl", format!("{good}{partial}").as_bytes());
    project.append("inbox/loose.jsonl", good.as_bytes());
    let (report, log) = run_once(&project, &[("BQSYNC_LOG", "info")]);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 1);
    let unread = report["unread"].as_array().unwrap();
    assert_eq!(unread.len(), 2, "{report}");
    assert_eq!(unread[0]["reason"], "partial_last_line", "{report}");
    assert_eq!(unread[0]["bytes_waiting"], partial.len(), "{report}");
    assert!(unread[0]["path"].as_str().unwrap().ends_with("inbox/atoms/a.jsonl"), "{report}");
    assert_eq!(unread[1]["reason"], "no_route", "{report}");
    assert!(unread[1]["path"].as_str().unwrap().ends_with("inbox/loose.jsonl"), "{report}");
    assert!(log.contains(&format!("last line has no newline, {} B waiting", partial.len())), "{log}");
    assert!(log.contains("loose.jsonl: no route of source `inbox` matches it"), "{log}");
    let status = text(&bqsync(&project, &["status"], &[]).stdout);
    assert!(status.contains(&format!("{} B waiting: last line has no newline", partial.len())), "{status}");
    let json = text(&bqsync(&project, &["status", "--json"], &[]).stdout);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["checkpoints"][0]["partial_last_line"], true, "{json}");

    // Opting in: a last line without a newline is taken once its file has settled.
    let env = [("BQSYNC__SOURCES__JSONL__0__FINAL_LINE_AFTER_MS", "300")];
    let (report, _) = run_once(&project, &env);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 2);
    assert_eq!(report["unread"].as_array().unwrap().len(), 1, "only the unrouted file is left: {report}");
}

#[test]
fn a_route_to_a_table_without_a_schema_is_refused_at_start_up() {
    let project = Project::new("[[sources.jsonl]]\nroutes = [{ glob = \"events/**\", table = \"evnets\" }]\n");
    let output = bqsync(&project, &["run", "--until-drained"], &[]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("route `events/**` goes to table `evnets`, which has no schema"), "{stderr}");
}

#[test]
fn one_shot_runs_leave_the_admin_port_alone_unless_asked() {
    let project = Project::new("");
    project.append("inbox/atoms/a.jsonl", atom_line("o-1", 1).as_bytes());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let env = [("BQSYNC__ADMIN__LISTEN", listen.as_str())];
    let output = bqsync(&project, &["run", "--until-drained"], &env);
    assert!(output.status.success(), "a one-shot run starts no admin server: {}", text(&output.stderr));
    let output = bqsync(&project, &["run", "--until-drained", "--admin"], &env);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("cannot listen on {listen}")) && stderr.contains("`admin.listen`"), "{stderr}");
}

#[test]
fn counters_tell_new_rows_from_rows_already_there_and_dead_letters() {
    let project = Project::new("");
    let mut lines: String = (0..301).map(|i| atom_line(&format!("n-{i}"), i)).collect();
    lines.push_str("{oops\n[1]\n\"text\"\n{\"event_id\":\"x\",\"created_at\":\"yesterday\"}\n");
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    let (report, log) = run_once(&project, &[("BQSYNC_LOG", "info")]);
    let worker = &report["worker"];
    assert_eq!(
        (&worker["offered"], &worker["landed_new"], &worker["already_present"], &worker["dead_lettered"]),
        (&301.into(), &301.into(), &0.into(), &4.into()),
        "{report}"
    );
    assert!(log.contains("landed atoms: 301 rows in"), "one INFO progress line in words: {log}");
    assert!(log.contains("301 new, 0 already present"), "{log}");

    let output = bqsync(&project, &["sync", "--full", "--land"], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let worker = &report["report"]["worker"];
    assert_eq!((&worker["landed_new"], &worker["already_present"]), (&0.into(), &301.into()), "{report}");
}

#[test]
fn config_prints_toml_that_reads_back_and_json() {
    let project = Project::new("[[sources.sqlite]]\nname = \"crm\"\npath = \"crm.db\"\n[[sources.sqlite.tables]]\nsource_table = \"contacts\"\ntable = \"contacts_master\"\n");
    let output = bqsync(&project, &["config"], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    assert!(printed.contains("[[sources.sqlite]]") && !printed.contains("Config {"), "{printed}");
    let copy = project.path("printed.toml");
    std::fs::write(&copy, &printed).unwrap();
    let again = bqsync(&project, &["--config", copy.to_str().unwrap(), "config"], &[]);
    assert!(again.status.success(), "the printed TOML is a valid config: {}", text(&again.stderr));
    assert_eq!(text(&again.stdout), printed, "and it means the same");
    let json = bqsync(&project, &["config", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["sources"]["sqlite"][0]["name"], "crm");
    assert_eq!(json["admin"]["listen"], "127.0.0.1:0");
}

#[test]
fn a_closed_pipe_ends_printing_commands_quietly() {
    let project = Project::new("");
    let bin = env!("CARGO_BIN_EXE_bqsync");
    // More output than a pipe buffer holds, so the writer meets the closed pipe.
    let sources: String =
        (0..1000).map(|i| format!("[[sources.sqlite]]\nname = \"s{i}\"\npath = \"s.db\"\ntables = []\n")).collect();
    std::fs::write(project.path("big.toml"), sources).unwrap();
    let script = format!("\"{bin}\" --config big.toml config | head -1");
    let output = Command::new("sh").arg("-c").arg(&script).current_dir(project.path("")).output().unwrap();
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert_eq!(text(&output.stdout).lines().count(), 1);
}

#[test]
fn dead_letters_point_at_the_file_and_line() {
    let project = Project::new("");
    let mut lines = atom_line("d-1", 1) + &atom_line("d-2", 2);
    lines.push_str("{\"event_id\":\"d-3\",\"created_at\":\"not a time\"}\n");
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    project.append("inbox/atoms/b.jsonl", b"ok?\n");
    project.append("inbox/my-data/c.jsonl", atom_line("d-4", 4).as_bytes());
    let utf16: Vec<u8> =
        [0xFF, 0xFE].into_iter().chain("{\"a\":1}\n".encode_utf16().flat_map(u16::to_le_bytes)).collect();
    project.append("inbox/atoms/wide.jsonl", &utf16);
    run_once(&project, &[]);
    let list = text(&bqsync(&project, &["dlq", "list"], &[]).stdout);
    assert!(list.contains("SOURCE (FILE:LINE)"), "{list}");
    assert!(list.contains("atoms/a.jsonl:3"), "the schema failure at line 3: {list}");
    assert!(list.contains("atoms/b.jsonl:1"), "the decode failure at line 1: {list}");
    let json: serde_json::Value =
        serde_json::from_slice(&bqsync(&project, &["dlq", "list", "--json"], &[]).stdout).unwrap();
    let details: Vec<String> = json.as_array().unwrap().iter().map(|r| r["detail"].to_string()).collect();
    assert!(details.iter().any(|d| d.contains("the file is UTF-16LE text, not UTF-8")), "{details:?}");
    assert!(
        details.iter().any(|d| d.contains("`my-data` is not a valid table name") && d.contains("`routes`")),
        "{details:?}"
    );
}

#[test]
fn bigquery_schema_json_is_a_schema_file() {
    let project = Project::new("");
    let fields = r#"[{"name": "id", "type": "string", "mode": "REQUIRED"}, {"name": "n", "type": "INTEGER"}]"#;
    std::fs::write(project.path("schemas/legacy.json"), fields).unwrap();
    project.append("inbox/legacy/a.jsonl", b"{\"id\":\"a\",\"n\":1}\n{\"id\":\"b\",\"n\":2}\n");
    run_once(&project, &[]);
    assert_eq!(project.query_i64("SELECT sum(n) FROM legacy"), 3);
    std::fs::write(project.path("schemas/legacy.json"), r#"[{"name": "id", "type": "INT64"}]"#).unwrap();
    let output = bqsync(&project, &["run", "--until-drained"], &[]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("type changes need a migration: to change it, add a new NULLABLE column"), "{stderr}");
    assert!(!stderr.contains("run from the project directory"), "{stderr}");
}

#[test]
fn a_log_setting_that_means_nothing_is_refused_and_names_the_variable() {
    let project = Project::new("");
    for (variable, value, message) in [
        ("BQSYNC_LOG_FORMAT", "xml", "bqsync: error: BQSYNC_LOG_FORMAT=\"xml\": expected `text`, `json` or `auto`\n"),
        (
            "BQSYNC_LOG",
            "verbose",
            "bqsync: error: BQSYNC_LOG=\"verbose\": `verbose` is not a level; use a level (trace, debug, info, warn, \
             error, off) or directives such as `info,bqsync::bus=trace`\n",
        ),
    ] {
        let output = project.command(&["run", "--until-drained"]).env(variable, value).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), message);
        assert!(!project.path("bqsync.duckdb").exists(), "nothing ran");
    }
}

#[test]
fn a_redirected_log_is_plain_text() {
    let project = Project::new("");
    project.append("inbox/atoms/a.jsonl", common::atom_line("k-1", 1).as_bytes());
    let output = project.command(&["run", "--until-drained"]).env("BQSYNC_LOG", "info").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains(" INFO "), "info lines are logged: {log}");
    assert!(!log.contains('\u{1b}'), "no ANSI escape in a redirected log: {log:?}");
}

#[test]
fn bigquery_without_credentials_says_how_to_provide_them() {
    let project = Project::new("[warehouse]\nkind = \"bigquery\"\n[warehouse.bigquery]\nproject = \"p\"\n");
    let home = tempfile::tempdir().unwrap();
    let output = project
        .command(&["setup"])
        .env("HOME", home.path())
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("CLOUDSDK_CONFIG")
        .env_remove("BIGQUERY_EMULATOR_HOST")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("GCE_METADATA_HOST")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("Application Default Credentials were not found"), "{stderr}");
    assert!(stderr.contains("gcloud auth application-default login"), "{stderr}");
    assert!(!stderr.contains("Connection failure"), "{stderr}");
}

#[test]
fn a_refused_credential_is_reported_once_not_retried() {
    use std::io::{Read, Write};
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for mut stream in server.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let body = "{\"error\":\"invalid token\"}";
            let reply = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    let project = Project::new(&format!(
        "[sources]\njsonl = []\n[[sources.http]]\nname = \"idp\"\nurl = \"http://127.0.0.1:{port}/v1/users\"\n\
         table = \"idp_users\"\nauth_env = \"IDP_TOKEN\"\nrecords_path = \"users\"\ncursor_param = \"since\"\ncursor_field = \"modifiedTime\"\n"
    ));
    let output = bqsync(&project, &["run", "--until-drained"], &[("IDP_TOKEN", "Bearer stale")]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("the API refused the credential (401 Unauthorized"), "{stderr}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1, "a 401 is not retried: {stderr}");
}

#[test]
fn a_one_shot_run_shows_progress_on_a_terminal_only() {
    let project = Project::new("");
    let lines: String = (0..20_000).map(|i| atom_line(&format!("t-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    // `script` gives the run a terminal (a pseudo-terminal) and copies what it draws to stdout.
    let on_terminal = |env: &[(&str, &str)]| {
        let command = format!("{} run --until-drained", env!("CARGO_BIN_EXE_bqsync"));
        let output = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .current_dir(project.path(""))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
    };
    let drawn = on_terminal(&[]);
    assert!(drawn.contains("published 20000, landed 20000 (20000 new), dead-lettered 0"), "{drawn}");
    std::fs::remove_dir_all(project.path(".bqsync")).unwrap();
    std::fs::remove_file(project.path("bqsync.duckdb")).unwrap();
    let json_mode = on_terminal(&[("BQSYNC_LOG_FORMAT", "json")]);
    assert!(!json_mode.contains("published "), "no bar in JSON-log mode: {json_mode}");
    let (_, redirected) = run_once(&project, &[("BQSYNC_LOG", "info")]);
    assert!(!redirected.contains("published "), "no bar when stderr is not a terminal: {redirected}");
}
