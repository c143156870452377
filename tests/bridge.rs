//! The KiviCare bridge (bridge/wordpress/kivihook-bridge) in a real WordPress (Debian's
//! `wordpress` package on php-cli, the local MariaDB) with KiviCare-shaped tables, against
//! the real `kivihook` binary. tests/bridge/driver.php boots the site and fires KiviCare's
//! actions with KiviCare's own arguments; this file checks what reaches a receiver.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use kivihook_core::event::EventType;
use serde_json::{json, Value};

const CLINIC: &str = "12";

/// The tests take turns: each times clinic requests, and the other's PHP processes would
/// be in the measurement.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One WordPress site of a test: its own database and scratch directory.
struct Site {
    db: String,
    dir: PathBuf,
}

impl Site {
    fn new(prefix: &str) -> Self {
        assert!(
            Command::new("php").arg("-v").output().is_ok(),
            "php-cli is required (bash .ci/run installs php-cli, php-mysql and wordpress)"
        );
        assert!(
            Path::new(&wp_dir()).join("wp-settings.php").exists(),
            "WordPress is required at {} (bash .ci/run installs Debian's wordpress)",
            wp_dir()
        );
        let dir = std::env::temp_dir().join(format!("kivihook-bridge-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            db: format!("kh_bridge_{}", prefix.replace('-', "_")),
            dir,
        }
    }

    /// Run one driver command; its stdout.
    async fn run(&self, args: &[&str]) -> String {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut cmd = Command::new("php");
        cmd.arg(format!("{root}/tests/bridge/driver.php"))
            .args(args)
            .env("KH_DB", &self.db)
            .env("KH_DIR", &self.dir)
            .env(
                "KH_PLUGIN",
                format!("{root}/bridge/wordpress/kivihook-bridge"),
            )
            .env("KH_WP", wp_dir());
        let what = args.join(" ");
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run php"))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "driver {what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args).await;
        // WordPress may print notices (a missing sendmail at install) before the JSON line.
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("driver {args:?}: no JSON in {out}"));
        serde_json::from_str(line).unwrap()
    }

    async fn outbox(&self) -> Value {
        self.json(&["counts"]).await
    }
}

/// The site's database and directory go, whether the test passed or failed.
impl Drop for Site {
    fn drop(&mut self) {
        let root = env!("CARGO_MANIFEST_DIR");
        let _ = Command::new("php")
            .arg(format!("{root}/tests/bridge/driver.php"))
            .arg("drop")
            .env("KH_DB", &self.db)
            .env("KH_DIR", &self.dir)
            .env(
                "KH_PLUGIN",
                format!("{root}/bridge/wordpress/kivihook-bridge"),
            )
            .env("KH_WP", wp_dir())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wp_dir() -> String {
    std::env::var("KIVIHOOK_TEST_WORDPRESS").unwrap_or_else(|_| "/usr/share/wordpress".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Undo WordPress's esc_html so the page's text can be compared with KiviHook's own words.
fn unescape(html: &str) -> String {
    html.replace("&#039;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64) * 0.99).ceil() as usize;
    v[i.clamp(1, v.len()) - 1]
}

fn timings(requests: &Value, key: &str) -> Vec<f64> {
    requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_f64().unwrap())
        .collect()
}

/// What one clinic request must produce, computed here from the actions it fired: each
/// action's type by KiviHook's own alias table, the milestones a status names, and one
/// event per type and record however many alias actions fired in the request.
fn expected_events(request: &Value) -> Vec<(String, String)> {
    let record = match &request["record"] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |t: &str| {
        let e = (t.to_owned(), record.clone());
        if !out.contains(&e) {
            out.push(e);
        }
    };
    for action in request["actions"].as_array().unwrap() {
        let action = action.as_str().unwrap();
        let canonical = EventType::parse(action)
            .unwrap_or_else(|_| panic!("{action} is not a KiviHook alias"))
            .as_str()
            .to_owned();
        push(&canonical);
        if action == "kc_appointment_status_update" {
            match request["status"].as_i64() {
                Some(0) => push("appointment.cancelled"),
                Some(3) => push("appointment.checked_out"),
                Some(4) => push("appointment.checked_in"),
                _ => {}
            }
        }
    }
    if request["closed"] == json!(true) {
        push("encounter.closed");
    }
    if request["paid"] == json!(true) {
        push("bill.paid");
    }
    out
}

/// The action and record an event id names: `kc_<site>_<action>_<record>_<row>`.
fn id_parts<'a>(id: &'a str, site: &str, actions: &[String]) -> (String, &'a str) {
    let rest = id
        .strip_prefix(&format!("kc_{site}_"))
        .unwrap_or_else(|| panic!("{id}: not this site's id"));
    let rest = &rest[..rest.rfind('_').expect("row")];
    let action = actions
        .iter()
        .filter(|a| rest.starts_with(&format!("{a}_")))
        .max_by_key(|a| a.len())
        .unwrap_or_else(|| panic!("{id}: names no hooked action"));
    (action.clone(), &rest[action.len() + 1..])
}

fn check_placeholders(e: &Value, record: &str, action: &str) {
    let t = e["type"].as_str().unwrap();
    let d = &e["data"];
    let what = format!("{t} from {action}");
    assert_eq!(e["clinic_id"], json!(CLINIC), "{what}: clinic_id");
    assert_eq!(d["clinic_name"], json!("Central Clinic"), "{what}");
    assert_eq!(d["clinic"]["clinic_id"], json!(CLINIC), "{what}");
    assert_eq!(d["site_timezone"], json!("Europe/Berlin"), "{what}");
    let family = t.split('.').next().unwrap();
    let eq = |field: &str, want: &str| assert_eq!(d[field], json!(want), "{what}: {field}");
    match family {
        "appointment" => {
            eq("appointment_id", record);
            eq("patient_name", "Ada Lovelace");
            eq("patient_email", "ada@example.com");
            eq("patient_contact_number", "+44 20 7946 0000");
            eq("doctor_name", "Dr. Grace Hopper");
            eq("appointment_date", "2026-12-01");
            eq("appointment_start_time", "09:30:00");
            eq("service_names", "General consultation, Blood test");
            eq("appointment_timezone", "Europe/Berlin");
            assert_eq!(d["appointment"]["appointment_id"], json!(record), "{what}");
            assert_eq!(
                d["patient"]["patient_name"],
                json!("Ada Lovelace"),
                "{what}"
            );
            let status = d["appointment_status"].as_i64();
            match t {
                "appointment.checked_in" => assert_eq!(status, Some(4), "{what}"),
                "appointment.checked_out" => assert_eq!(status, Some(3), "{what}"),
                "appointment.cancelled" => assert_eq!(status, Some(0), "{what}"),
                "appointment.booked" => assert_eq!(status, Some(1), "{what}"),
                _ => {}
            }
        }
        "encounter" => {
            eq("encounter_id", record);
            eq("encounter_date", "2026-12-01");
            eq("patient_name", "Ada Lovelace");
            eq("doctor_name", "Dr. Grace Hopper");
            if t == "encounter.closed" {
                assert_eq!(d["encounter_status"], json!(0), "{what}");
            }
        }
        "patient" => {
            eq("patient_id", record);
            eq("patient_name", "Ada Lovelace");
            eq("patient_email", "ada@example.com");
            eq("patient_gender", "female");
        }
        "doctor" => {
            eq("doctor_id", record);
            eq("doctor_name", "Dr. Grace Hopper");
            eq("doctor_specialty", "General practice");
        }
        "receptionist" => {
            eq("receptionist_id", record);
            eq("receptionist_name", "Alan Turing");
            eq("receptionist_contact_number", "+44 20 7946 0003");
        }
        "clinic" => {
            eq("clinic_email", "front-desk@clinic.example");
            assert!(
                d["clinic_address"]
                    .as_str()
                    .unwrap()
                    .starts_with("1 High Street"),
                "{what}"
            );
        }
        "bill" => {
            eq("bill_title", "Consultation");
            eq("bill_actual_amount", "65.00");
            eq("patient_name", "Ada Lovelace");
            if t == "bill.paid" {
                eq("bill_payment_status", "paid");
            }
        }
        "prescription" => {
            eq("prescription_id", record);
            eq("prescription_name", "Amoxicillin 500 mg");
            eq("patient_name", "Ada Lovelace");
            eq("doctor_name", "Dr. Grace Hopper");
        }
        "service" => {
            eq("service_id", record);
            eq("service_name", "General consultation");
            eq("doctor_name", "Dr. Grace Hopper");
        }
        other => panic!("{what}: unexpected family {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kivicare_action_arrives_once_and_an_outage_loses_nothing() {
    let _turn = TURN.lock().await;
    let prefix = unique_prefix();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut k = Kivihook::start("all", &prefix, &[("KIVIHOOK_BIND", &bind)]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    let hook = api
        .create_webhook(json!({"name": "clinic CRM", "url": receiver.url(), "events": ["*"]}))
        .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();

    let site = Site::new(&prefix);
    let installed = site
        .json(&["install", &format!("http://{bind}"), INGEST])
        .await;
    assert_eq!(installed["table"], json!(true), "the outbox table exists");
    assert_eq!(installed["cron"], json!(true), "the sender is scheduled");
    let site_id = installed["site_id"].as_str().unwrap().to_owned();

    // Every hooked action, each in a clinic request of its own (some with its alias pair).
    let fired = site.json(&["fire-all"]).await;
    let hooked: Vec<String> = fired["hooked"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(a, on)| {
            assert_eq!(on, &json!(true), "{a} is hooked");
            a.clone()
        })
        .collect();
    let fired_actions: HashSet<&str> = fired["requests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["actions"].as_array().unwrap())
        .map(|a| a.as_str().unwrap())
        .collect();
    for a in &hooked {
        assert!(fired_actions.contains(a.as_str()), "{a} was not fired");
    }
    for a in [
        "kc_after_create_appointment",
        "kc_appointment_book",
        "kc_patient_save",
    ] {
        assert!(hooked.iter().any(|h| h == a), "{a} is hooked");
    }
    let mut expected: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in fired["requests"].as_array().unwrap() {
        for e in expected_events(r) {
            *expected.entry(e).or_default() += 1;
        }
    }
    let total: usize = expected.values().sum();
    assert_eq!(
        fired["outbox"]["pending"],
        json!(total),
        "the outbox holds one row per expected event before anything is sent"
    );
    assert_eq!(
        receiver.count(),
        0,
        "nothing is sent from the clinic's requests"
    );

    let sent = site.json(&["send"]).await;
    assert_eq!(sent["outbox"]["pending"], json!(0), "{sent}");
    assert_eq!(sent["outbox"]["sent"], json!(total), "{sent}");
    wait_until(Duration::from_secs(60), "every action's delivery", || {
        receiver.count() >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    assert_eq!(got.len(), total, "one delivery per event, no more");
    let mut delivered: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut ids = HashSet::new();
    for r in &got {
        assert!(verify_signature(&secret, r), "a signed delivery");
        let e = r.json();
        let id = e["id"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "{id} delivered twice");
        let (action, record) = id_parts(id, &site_id, &hooked);
        check_placeholders(&e, record, &action);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("not-to-be-forwarded"),
            "a password KiviCare passes along is not forwarded"
        );
        *delivered
            .entry((e["type"].as_str().unwrap().to_owned(), record.to_owned()))
            .or_default() += 1;
    }
    assert_eq!(delivered, expected, "each change once, with the right type");
    let types: HashSet<&str> = expected.keys().map(|(t, _)| t.as_str()).collect();
    println!(
        "{} hooked actions fired in {} clinic requests → {} events of {} types, all delivered signed",
        hooked.len(),
        fired["requests"].as_array().unwrap().len(),
        total,
        types.len()
    );

    // Test connection posts custom.kivihook.test, delivered like any event.
    let test = site.json(&["test-connection"]).await;
    assert_eq!(test["ok"], json!(true), "{test}");
    wait_until(Duration::from_secs(20), "the test event", || {
        receiver.count() > total
    })
    .await;
    assert_eq!(
        receiver.received().last().unwrap().json()["type"],
        "custom.kivihook.test"
    );
    let before_outage = receiver.count();

    // KiviHook stops; 200 bookings wait in the outbox.
    k.kill();
    let booked = site.json(&["book", "200"]).await;
    assert_eq!(
        booked["outbox"]["pending"],
        json!(200),
        "{}",
        booked["outbox"]
    );
    let down = site.json(&["send"]).await;
    assert_eq!(down["outbox"]["pending"], json!(200), "nothing is lost");
    assert_eq!(down["outbox"]["parked"], json!(0), "nothing is parked");
    assert!(
        down["last_error"]
            .as_str()
            .unwrap()
            .starts_with("KiviHook unreachable"),
        "{down}"
    );
    assert!(
        down["backoff_until"].as_i64().unwrap() > 0,
        "the sender backs off"
    );

    // KiviHook is back: all 200 arrive, once.
    let k2 = Kivihook::start("all", &prefix, &[("KIVIHOOK_BIND", &bind)]);
    let up = site.json(&["send"]).await;
    assert_eq!(up["outbox"]["pending"], json!(0), "{up}");
    assert_eq!(up["last_error"], Value::Null, "{up}");
    wait_until(Duration::from_secs(60), "the 200 bookings", || {
        receiver.count() >= before_outage + 200
    })
    .await;
    // A sender that lost KiviHook's answer sends again: KiviHook knows the ids.
    let requeued = site.json(&["requeue-sent", "200"]).await;
    assert_eq!(requeued["requeued"], json!(200));
    let again = site.json(&["send"]).await;
    assert_eq!(again["outbox"]["pending"], json!(0), "{again}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<Value> = receiver.received()[before_outage..]
        .iter()
        .map(|r| r.json())
        .collect();
    assert_eq!(after.len(), 200, "all 200 delivered, none twice");
    let unique: HashSet<&str> = after.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 200);
    assert!(after.iter().all(|e| e["type"] == "appointment.booked"));

    // The clinic's request never calls KiviHook: 200 more bookings with KiviHook up, and not
    // one event reaches it while they run (the sender posts the outbox later, on its own).
    let ingested = metric_sum(&k2, "kivihook_events_ingested_total").await;
    let again = site.json(&["book", "200"]).await;
    assert_eq!(
        metric_sum(&k2, "kivihook_events_ingested_total").await,
        ingested,
        "a clinic request posts nothing to KiviHook"
    );
    assert_eq!(
        again["outbox"]["pending"],
        json!(200),
        "{}",
        again["outbox"]
    );

    // The time the bridge added to the clinic's requests (its hooks, one INSERT each),
    // measured and reported for each run: with KiviHook down, then up. It is a measurement
    // of this machine (2 cores shared with MariaDB, RabbitMQ, Redis and the other tests),
    // not a bound a test can hold on every machine.
    let runs = [
        (
            "KiviHook down",
            fired["requests"].clone(),
            booked["requests"].clone(),
        ),
        ("KiviHook up", json!([]), again["requests"].clone()),
    ];
    for (when, all, book) in &runs {
        let mut added = timings(all, "timing_ms");
        added.extend(timings(book, "timing_ms"));
        let mut end = timings(all, "end_ms");
        end.extend(timings(book, "end_ms"));
        let n = added.len();
        let mut sorted = added.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "{when}: time added to the clinic's request over {n} requests: median {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             collecting the outbox write's answer at the end of the request (after the response under PHP-FPM): p99 {:.2} ms; load average {}",
            sorted[n / 2],
            p99(added),
            sorted[n - 1],
            p99(end),
            load.split(' ').take(3).collect::<Vec<_>>().join(" ")
        );
    }

    drop(k2);
    drop(site);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_an_unreachable_url_and_a_refused_event_show_on_the_settings_page() {
    let _turn = TURN.lock().await;
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    api.create_webhook(json!({"name": "all", "url": receiver.url(), "events": ["*"]}))
        .await;
    let base = format!("http://{}", k.addr);
    let site = Site::new(&prefix);
    site.json(&["install", &base, INGEST]).await;

    // The plain key set with update_option is sealed on first use, and never shown.
    site.json(&["book", "1"]).await;
    site.json(&["send"]).await;
    let stored = site.json(&["key-stored"]).await;
    let stored = stored["stored"].as_str().unwrap();
    assert!(stored.starts_with("khenc:v1:"), "{stored}");
    assert!(!stored.contains(INGEST));
    wait_until(Duration::from_secs(20), "the first booking", || {
        receiver.count() == 1
    })
    .await;

    // KiviHook's own words for each problem, asked directly.
    let http = reqwest::Client::new();
    let message = |body: Value| body["error"]["message"].as_str().unwrap().to_owned();
    let r = http
        .post(format!("{base}/v1/events/batch"))
        .bearer_auth("wrong-key")
        .json(&json!({"events": [{"type": "appointment.booked", "data": {}}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 401);
    let unauthorized = message(r.json().await.unwrap());
    let r = http
        .post(format!("{base}/v1/events/batch"))
        .bearer_auth(INGEST)
        .json(&json!({"events": [{"type": "custom.Lab Result!", "data": {}}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 422);
    let refused = message(r.json().await.unwrap());

    // A wrong key: 401 on the page with KiviHook's message; the row waits, not parked.
    site.run(&["set-key", "wrong-key"]).await;
    site.json(&["book", "1"]).await;
    let sent = site.json(&["send"]).await;
    assert_eq!(sent["outbox"]["pending"], json!(1), "{sent}");
    assert_eq!(sent["outbox"]["parked"], json!(0), "{sent}");
    let page = unescape(&site.run(&["render"]).await);
    assert!(page.contains("HTTP 401"), "{page}");
    assert!(page.contains(&unauthorized), "{unauthorized} not in {page}");
    assert!(
        !page.contains(INGEST) && !page.contains("wrong-key"),
        "no key on the page"
    );

    // An unreachable URL.
    site.run(&["set-key", INGEST]).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    site.run(&["set-url", &closed]).await;
    let sent = site.json(&["send"]).await;
    assert_eq!(sent["outbox"]["pending"], json!(1), "{sent}");
    let page = unescape(&site.run(&["render"]).await);
    assert!(page.contains("KiviHook unreachable"), "{page}");
    let test = site.json(&["test-connection"]).await;
    assert_eq!(test["ok"], json!(false));

    // A refused event between good ones: parked with KiviHook's message, the others flow.
    site.run(&["set-url", &base]).await;
    site.json(&["enqueue-bad"]).await;
    site.json(&["book", "1"]).await;
    let sent = site.json(&["send"]).await;
    assert_eq!(sent["outbox"]["pending"], json!(0), "{sent}");
    assert_eq!(sent["outbox"]["parked"], json!(1), "{sent}");
    wait_until(Duration::from_secs(20), "the good events", || {
        receiver.count() == 3
    })
    .await;
    let page = unescape(&site.run(&["render"]).await);
    assert!(page.contains(&refused), "{refused} not in {page}");
    assert!(page.contains("custom.Lab Result!"), "{page}");
    assert!(page.contains("HTTP 422"), "{page}");
    // Parked means not retried: another send leaves it alone.
    site.json(&["book", "1"]).await;
    site.json(&["send"]).await;
    let counts = site.outbox().await;
    assert_eq!(counts["outbox"]["parked"], json!(1));
    assert_eq!(counts["max_attempts_parked"], json!(1), "{counts}");
    wait_until(Duration::from_secs(20), "the next booking", || {
        receiver.count() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 4);
    let mut types: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        *types
            .entry(r.json()["type"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(types.get("appointment.booked"), Some(&4), "{types:?}");

    // The installable zip.
    let out = std::env::temp_dir().join(format!("kivihook-bridge-zip-{prefix}"));
    let built = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bridge/wordpress/build-zip.sh"
        ))
        .arg(&out)
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let zip = String::from_utf8(built.stdout).unwrap();
    let bytes = std::fs::read(zip.trim()).unwrap();
    assert!(bytes.starts_with(b"PK"), "a zip");
    assert!(
        bytes
            .windows(35)
            .any(|w| w == b"kivihook-bridge/kivihook-bridge.php"),
        "the main file at the plugin's path"
    );
    let _ = std::fs::remove_dir_all(&out);

    // Deactivation stops the sender; uninstall leaves nothing behind.
    let gone = site.json(&["uninstall"]).await;
    assert_eq!(gone["cron_after_deactivate"], json!(false), "{gone}");
    assert_eq!(gone["options_left"], json!([]), "{gone}");
    assert_eq!(gone["table_left"], json!(false), "{gone}");

    drop(site);
    cleanup(&prefix).await;
}
