//! The README's promises that can drift from the binary: its first code block holds the two
//! command lines a newcomer runs, and its "Flags" tables list exactly the flags of
//! `audit-forwarder --help` and `audit-forwarder tailer --help`, each with the short alias,
//! `AUDIT_*` variable and default the help prints; its "Metrics and health" table lists exactly
//! the metric families the forwarder exposes, with their types and labels.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

/// One flag as the help (or a README row) states it. Empty strings mean "none given".
#[derive(Debug, PartialEq)]
struct Flag {
    short: String,
    env: String,
    default: String,
}

fn help(args: &[&str]) -> String {
    let out = Command::new(common::bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", common::bin()));
    assert!(out.status.success(), "{args:?} exited {}", out.status);
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The flags of a help text, by long name. An entry starts with a line indented by four spaces
/// and beginning with `-`; lines indented further that start with `[AUDIT_` or `default:`
/// continue its head (the help wraps long heads), everything else is description.
fn help_flags(text: &str) -> BTreeMap<String, Flag> {
    let mut heads: Vec<String> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        if indent == 4 && body.starts_with('-') {
            heads.push(body.to_string());
        } else if indent > 8 && (body.starts_with("[AUDIT_") || body.starts_with("default:")) {
            if let Some(h) = heads.last_mut() {
                h.push(' ');
                h.push_str(body);
            }
        }
    }
    let mut flags = BTreeMap::new();
    for head in heads {
        let mut words = head.split_whitespace();
        let first = words.next().unwrap_or_default();
        let (short, long) = match first.strip_suffix(',') {
            Some(s) => (s.to_string(), words.next().unwrap_or_default()),
            None => (String::new(), first),
        };
        // `--plaintext[=BOOL]`: the name ends before an optional value.
        let long = long.split('[').next().unwrap_or_default().to_string();
        assert!(long.starts_with("--"), "no long flag in help line {head:?}");
        let env = match head.find("[AUDIT_") {
            Some(i) => head[i + 1..]
                .split(']')
                .next()
                .unwrap_or_default()
                .to_string(),
            None => String::new(),
        };
        let default = match head.find("default: ") {
            Some(i) => head[i + "default: ".len()..].trim().to_string(),
            None if head.ends_with(" required") => "required".to_string(),
            None => String::new(),
        };
        let dup = flags.insert(
            long.clone(),
            Flag {
                short,
                env,
                default,
            },
        );
        assert!(dup.is_none(), "{long} twice in the help");
    }
    flags
}

/// A table cell without its code spans' backticks: `` `AUDIT_TAG` `` -> `AUDIT_TAG`.
fn plain(cell: &str) -> String {
    cell.trim().replace('`', "")
}

/// The Markdown tables of the README's "## Flags" section, in order; each row as its cells.
fn flag_tables(readme: &str) -> Vec<Vec<Vec<String>>> {
    let start = readme
        .find("\n## Flags\n")
        .expect("README has a \"## Flags\" section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut tables: Vec<Vec<Vec<String>>> = Vec::new();
    let mut in_table = false;
    for line in section[..end].lines() {
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table {
            tables.push(Vec::new());
            in_table = true;
        }
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        let cells: Vec<String> = inner.split('|').map(str::to_string).collect();
        if cells
            .iter()
            .all(|c| c.trim().chars().all(|ch| "-: ".contains(ch)))
        {
            continue; // the separator row
        }
        if let Some(t) = tables.last_mut() {
            t.push(cells);
        }
    }
    tables
}

/// A README flag table (header row dropped) by long name: first cell `` `-x`, `--long` `` or
/// `` `--long` ``, then the variable, the default and the meaning.
fn readme_flags(table: &[Vec<String>]) -> BTreeMap<String, Flag> {
    let (header, rows) = table.split_first().expect("a table with a header row");
    assert_eq!(
        header.iter().map(|c| plain(c)).collect::<Vec<_>>(),
        ["flag", "env var", "default", "meaning"],
        "flag table header"
    );
    let mut flags = BTreeMap::new();
    for row in rows {
        assert_eq!(row.len(), 4, "README flag row without four cells: {row:?}");
        let names = plain(&row[0]);
        let (short, long) = match names.split_once(", ") {
            Some((s, l)) => (s.to_string(), l.to_string()),
            None => (String::new(), names.clone()),
        };
        assert!(
            !plain(&row[3]).is_empty(),
            "README row for {long} has no meaning"
        );
        let dup = flags.insert(
            long.clone(),
            Flag {
                short,
                env: plain(&row[1]),
                default: plain(&row[2]),
            },
        );
        assert!(dup.is_none(), "{long} twice in one README table");
    }
    flags
}

/// Every flag of the help in the table with the same alias, variable and default, and no flag
/// in the table that the help lacks.
fn assert_table_matches(mode: &str, help: &BTreeMap<String, Flag>, table: &BTreeMap<String, Flag>) {
    assert!(
        help.len() >= 15,
        "{mode}: only {} flags parsed from the help: {help:?}",
        help.len()
    );
    assert_same_rows(&format!("{mode}: --help"), help, table);
}

/// `table` (the README's) has a row for every key of `source`, equal to it, and no other.
fn assert_same_rows<V: PartialEq + std::fmt::Debug>(
    source: &str,
    want: &BTreeMap<String, V>,
    table: &BTreeMap<String, V>,
) {
    for (key, want) in want {
        let got = table
            .get(key)
            .unwrap_or_else(|| panic!("{key} is in {source} but not in the README table"));
        assert_eq!(got, want, "README row for {key} (left) vs {source} (right)");
    }
    for key in table.keys() {
        assert!(
            want.contains_key(key),
            "the README table lists {key}, which {source} does not"
        );
    }
}

#[test]
fn readme_flag_tables_match_help() {
    let readme = include_str!("../README.md");
    let tables = flag_tables(readme);
    assert_eq!(
        tables.len(),
        2,
        "the Flags section holds two tables: the forwarder's, then the tailer's"
    );
    assert_table_matches(
        "forwarder",
        &help_flags(&help(&["--help"])),
        &readme_flags(&tables[0]),
    );
    assert_table_matches(
        "tailer",
        &help_flags(&help(&["tailer", "--help"])),
        &readme_flags(&tables[1]),
    );
}

#[test]
fn readme_starts_with_the_two_commands() {
    let readme = include_str!("../README.md");
    assert!(
        readme.starts_with("```sh\ncargo install just && just demo\njust test\n```\n"),
        "README must open with the two command lines; it starts:\n{}",
        readme.chars().take(200).collect::<String>()
    );
}

#[test]
fn help_parser_reads_wrapped_heads() {
    let text = "OPTIONS:\n    -c, --config FILE             default: none (not read from the environment)\n        A YAML file.\n    --position-file PATH          [AUDIT_POSITION_FILE]\n                                  default: .pos beside it\n        Where.\n    --listen ADDR                 [AUDIT_LISTEN] required\n    --plaintext[=BOOL]            [AUDIT_PLAINTEXT] default: false\n    -h, --help                    Print this help.\n    The Service --service-name is not a flag line.\n";
    let flags = help_flags(text);
    let f = |short: &str, env: &str, default: &str| Flag {
        short: short.into(),
        env: env.into(),
        default: default.into(),
    };
    let want: BTreeMap<String, Flag> = [
        (
            "--config",
            f("-c", "", "none (not read from the environment)"),
        ),
        (
            "--position-file",
            f("", "AUDIT_POSITION_FILE", ".pos beside it"),
        ),
        ("--listen", f("", "AUDIT_LISTEN", "required")),
        ("--plaintext", f("", "AUDIT_PLAINTEXT", "false")),
        ("--help", f("-h", "", "")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(flags, want);
}

/// The first table after "## Metrics and health" (header `metric | type | labels | meaning`):
/// name -> (type, label names), from its rows.
fn readme_metrics(readme: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let start = readme
        .find("\n## Metrics and health\n")
        .expect("README has a \"## Metrics and health\" section");
    let mut rows = readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| metric |"))
        .take_while(|l| l.starts_with('|'));
    let header = rows
        .next()
        .expect("a metric table in \"Metrics and health\"");
    let cells = |l: &str| -> Vec<String> {
        l.trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .split('|')
            .map(plain)
            .collect()
    };
    assert_eq!(cells(header), ["metric", "type", "labels", "meaning"]);
    let mut out = BTreeMap::new();
    for row in rows.skip(1) {
        let c = cells(row);
        assert_eq!(c.len(), 4, "metric row without four cells: {row}");
        assert!(!c[3].is_empty(), "metric row without a meaning: {row}");
        let labels = c[2]
            .split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let dup = out.insert(c[0].clone(), (c[1].clone(), labels));
        assert!(dup.is_none(), "{} twice in the metric table", c[0]);
    }
    out
}

/// Every family `/metrics` exposes (from `render` of a snapshot in which every labelled family
/// has a sample) is a row of the README's metric table with its type and label names, and the
/// table lists nothing the forwarder does not expose.
#[test]
fn readme_metric_table_matches_render() {
    use audit_forwarder::metrics::{render, Snapshot};
    let snap = Snapshot {
        file_lags: vec![("audit.log".into(), 1)],
        connection_failures: vec![("refused", 1)],
        target: Some("tailer:24224".into()),
        ..Snapshot::default()
    };
    let text = render(&snap);
    let mut exposed: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            exposed.insert(name.to_string(), (kind.to_string(), Vec::new()));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let labels = line
                .split_once('{')
                .and_then(|(_, l)| l.split_once('}'))
                .map(|(l, _)| l)
                .unwrap_or_default();
            let entry = exposed.get_mut(name).expect("a sample after its TYPE");
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let key = pair.split('=').next().unwrap_or_default().to_string();
                if !entry.1.contains(&key) {
                    entry.1.push(key);
                }
            }
        }
    }
    assert!(
        exposed.len() >= 20,
        "only {} families: {text}",
        exposed.len()
    );
    let table = readme_metrics(include_str!("../README.md"));
    assert_same_rows("/metrics", &exposed, &table);
}
