//! Log capture: every line, timestamped, rotated without loss; `logs` reads and follows.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::helper::*;

#[test]
fn rotation_keeps_every_line_across_files() {
    let n = 20_000;
    let p = Project::new(&format!(
        "[app.chatty]\ncommand = [\"python3\", \"-c\", \"import sys\\nfor i in range({n}): print('line', i, 'x' * 40)\"]\n\
         restart = \"never\"\nlogs = {{ max_size = \"64KiB\", keep = 1000 }}\n"
    ));
    let _sup = p.up(&[]);
    wait_for("chatty to exit", DEADLINE, || {
        (p.instance("chatty", 0)["state"] == "exited").then_some(())
    });
    let lines: Vec<String> = p
        .log_lines("chatty")
        .into_iter()
        .filter(|l| l.contains(" out line "))
        .collect();
    assert_eq!(lines.len(), n, "every line is kept");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.contains(&format!(" 0 out line {i} ")),
            "line {i} out of order: {l}"
        );
    }
    let files = std::fs::read_dir(p.path().join(".windlass/logs"))
        .expect("logs")
        .count();
    assert!(files > 10, "expected rotation into many files, got {files}");
    for e in std::fs::read_dir(p.path().join(".windlass/logs"))
        .expect("logs")
        .flatten()
    {
        assert!(
            e.metadata().expect("meta").len() <= 64 * 1024,
            "{:?} is over max_size",
            e.path()
        );
    }
}

#[test]
fn a_fast_writer_loses_no_line() {
    // ~1.1 million lines (about 40 MB) as fast as python can write them.
    let n = 1_100_000;
    let p = Project::new(&format!(
        "[app.fast]\ncommand = [\"python3\", \"-c\", \"import sys\\nw=sys.stdout.write\\nfor i in range({n}): w('%d abcdefghijklmnopqrstuvwxyz0123456789\\\\n' % i)\"]\n\
         restart = \"never\"\nlogs = {{ max_size = \"1GB\" }}\n"
    ));
    let _sup = p.up(&[]);
    wait_for("fast to exit", std::time::Duration::from_secs(120), || {
        (p.instance("fast", 0)["state"] == "exited").then_some(())
    });
    // Counted while streaming the file: the proxy's memory test shares this process.
    let file = std::fs::File::open(p.path().join(".windlass/logs/fast.log")).expect("log");
    let (mut count, mut last) = (0usize, String::new());
    for line in BufReader::new(file).lines() {
        let line = line.expect("utf-8 line");
        if line.contains(" 0 out ") {
            count += 1;
            last = line;
        }
    }
    assert_eq!(count, n);
    assert!(
        last.ends_with(&format!(
            " out {} abcdefghijklmnopqrstuvwxyz0123456789",
            n - 1
        )),
        "{last}"
    );
    assert_eq!(p.instance("fast", 0)["last_exit"]["code"], 0);
}

#[test]
fn logs_shows_past_lines_and_follows_new_ones() {
    let p = Project::empty();
    p.write(
        "tick.sh",
        "i=0\nwhile :; do echo tick $i; echo warn $i >&2; i=$((i+1)); sleep 0.05; done\n",
    );
    p.write(
        "windlass.toml",
        "[app.tick]\ncommand = [\"sh\", \"tick.sh\"]\n",
    );
    let _sup = p.up(&[]);
    wait_for("a few ticks", DEADLINE, || {
        (p.log_lines("tick").len() > 10).then_some(())
    });

    let o = p.run(&["logs", "tick", "-n", "3", "--json"]);
    assert!(o.status.success());
    let recs: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(recs.len(), 3);
    for r in &recs {
        assert_eq!(r["app"], "tick");
        assert_eq!(r["instance"], 0);
        assert!(r["stream"] == "out" || r["stream"] == "err", "{r}");
        assert!(r["ts"].as_str().expect("ts").ends_with('Z'));
    }

    let mut follow = p
        .cmd(&["logs", "tick", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let mut reader = BufReader::new(follow.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut seen_err = false;
    let mut seen_out = false;
    for _ in 0..50 {
        line.clear();
        reader.read_line(&mut line).expect("read");
        seen_out |= line.contains("tick.0 out tick");
        seen_err |= line.contains("tick.0 err warn");
        if seen_out && seen_err {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen_out && seen_err, "last line: {line}");
}
