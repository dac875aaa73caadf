//! What a newcomer runs into in the first hour, on the real binary: settings that mean nothing are
//! refused, and logs redirected to a file are plain text.

mod common;

use common::Project;

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
