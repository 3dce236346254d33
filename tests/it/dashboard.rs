//! The web dashboard end to end, in a real headless Chromium driven through chromedriver:
//! it shows the example app running, asks for the token, restarts the app from its button,
//! shows the new pid and (with the token) the log tail, leaves a screenshot in
//! `target/test-output/dashboard.png`, and works at `localhost` too.

use std::path::Path;

use crate::helper::webdriver::Browser;
use crate::helper::*;

const PID_CELL: &str = "const c = document.querySelector('[data-app=\"hello\"] tr[data-index=\"0\"] td[data-field=\"pid\"]'); return c ? c.textContent : null;";

#[test]
fn the_dashboard_restarts_an_app_and_shows_the_new_instance() {
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&format!(
        "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\n\n[app.ticker]\ncommand = [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"dash-token\"\n",
        hello_app().display()
    ));
    let _sup = p.up(&[]);
    wait_for("hello to answer", DEADLINE, || {
        http_get(port, "/health").ok()
    });
    let old_pid = p.instance("hello", 0)["pid"]
        .as_u64()
        .expect("pid")
        .to_string();

    let b = Browser::start();
    b.goto(&format!("http://127.0.0.1:{admin}/dashboard"));
    wait_for("the dashboard to show hello's pid", DEADLINE, || {
        (b.eval(PID_CELL).as_str() == Some(old_pid.as_str())).then_some(())
    });
    let state = b.eval(
        "return document.querySelector('[data-app=\"hello\"] [data-field=\"state\"]').textContent",
    );
    assert_eq!(state, "running");
    // Log lines need the token: the panel says so until it is given.
    wait_for("the log panel to ask for the token", DEADLINE, || {
        b.eval("return document.getElementById('log').textContent")
            .as_str()
            .is_some_and(|t| t.contains("need the admin token"))
            .then_some(())
    });

    // Restart: the API answers 401, the page asks for the token, then retries.
    b.click("[data-app=\"hello\"] button[data-action=\"restart\"]");
    wait_for("the token dialog", DEADLINE, || {
        (b.eval("return document.getElementById('token-dialog').open") == true).then_some(())
    });
    b.type_into("#token-input", "dash-token");
    b.click("#token-ok");
    let new_pid = wait_for("a new pid on the page", DEADLINE, || {
        b.eval(PID_CELL)
            .as_str()
            .filter(|t| t.parse::<u32>().is_ok() && *t != old_pid)
            .map(str::to_owned)
    });
    assert_eq!(
        p.instance("hello", 0)["pid"]
            .as_u64()
            .map(|p| p.to_string()),
        Some(new_pid.clone()),
        "the page shows the supervisor's pid"
    );
    assert_eq!(p.instance("hello", 0)["restarts"], 1);
    wait_for("the log tail to show ticker lines", DEADLINE, || {
        b.eval("return document.getElementById('log').textContent")
            .as_str()
            .is_some_and(|t| t.contains("tick "))
            .then_some(())
    });

    // Let the charts gather a few points, then keep a picture.
    wait_for("five chart samples", DEADLINE, || {
        b.eval("return document.querySelector('[data-app=\"hello\"]').dataset.samples")
            .as_str()
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n >= 5)
    });
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/dashboard.png");
    b.screenshot(&shot);
    let png = std::fs::read(&shot).expect("read the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");

    // The page works by name too (the listener answers for localhost, not for other names).
    b.goto(&format!("http://localhost:{admin}/dashboard"));
    wait_for(
        "the page at localhost to show hello's pid",
        DEADLINE,
        || (b.eval(PID_CELL).as_str() == Some(new_pid.as_str())).then_some(()),
    );
}
