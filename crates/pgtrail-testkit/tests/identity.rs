//! Token login against a real OpenID Connect provider (the npm package oidc-provider, run
//! locally), upstream login with certificates minted by the proxy to a PostgreSQL that
//! accepts only certificates, local tokens, and the identity on every event.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgtrail_event::{ActivityEvent, EventClass, Identity};
use pgtrail_proxy::{AuthConfig, ClientAuth, ClientTlsConfig, UpstreamLogin, UpstreamTlsMode};
use pgtrail_testkit::*;

/// PostgreSQL that accepts only TLS client certificates signed by the proxy's CA in `ca_dir`.
fn cert_only_pg(tls: &TlsFiles, ca_dir: &Path) -> LocalPg {
    let (ca, _) =
        pgtrail_identity::ca::UpstreamCa::load_or_create(ca_dir, std::time::Duration::from_secs(600)).expect("CA");
    drop(ca);
    let ca_pem = std::fs::read_to_string(ca_dir.join(pgtrail_identity::ca::CA_CERT_FILE)).expect("CA cert");
    let pg = start_pg_with(LocalPgOptions {
        auth: HostAuth::Cert,
        tls: Some((tls.cert_pem.clone(), tls.key_pem.clone())),
        client_ca: Some(ca_pem),
        settings: vec!["log_connections = on".into()],
        ..Default::default()
    });
    pg.psql(
        "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE TABLE accounts (id int, balance int); \
             GRANT ALL ON accounts TO alice, bob; INSERT INTO accounts VALUES (1, 100), (2, 200);",
    )
    .expect("roles");
    pg
}

/// The OIDC provider, TLS files, the proxy's CA and a PostgreSQL that trusts only it.
struct Setup {
    provider: OidcProvider,
    tls: TlsFiles,
    ca_dir: tempfile::TempDir,
    pg: LocalPg,
}

impl Setup {
    fn start() -> Self {
        let provider = OidcProvider::start();
        let tls = TlsFiles::generate();
        let ca_dir = tempfile::tempdir().expect("dir");
        let pg = cert_only_pg(&tls, ca_dir.path());
        Self { provider, tls, ca_dir, pg }
    }
}

fn oidc_auth(provider: &OidcProvider, ca_dir: &Path) -> AuthConfig {
    let mut oidc = pgtrail_identity::OidcConfig::new(&provider.issuer, "pgtrail");
    oidc.clock_skew_secs = 0;
    let mapping: pgtrail_identity::UserMapping = serde_json::from_value(serde_json::json!({
        "user_claim": "preferred_username",
        "groups": {"dba": ["postgres"]},
    }))
    .expect("mapping");
    AuthConfig {
        client: ClientAuth::Token,
        upstream: UpstreamLogin::Cert,
        oidc: Some(oidc),
        mapping,
        ca_dir: Some(ca_dir.to_path_buf()),
        ..AuthConfig::default()
    }
}

async fn token_proxy(
    pg: &LocalPg,
    tls: &TlsFiles,
    auth: AuthConfig,
    policy: pgtrail_proxy::PolicyConfig,
) -> TestCapture {
    TestCapture::start_with(pg, |c| {
        c.proxy.client_tls = Some(ClientTlsConfig { cert_file: tls.cert_path(), key_file: tls.key_path() });
        c.proxy.upstream.tls = UpstreamTlsMode::Require;
        c.proxy.auth = auth;
        c.proxy.policy = policy;
    })
    .await
}

fn url(capture: &TestCapture, user: &str, token: &str) -> String {
    format!("{}?sslmode=require", capture.url(user, token, "postgres"))
}

/// psql's error text and whether it succeeded.
fn login(pg: &LocalPg, capture: &TestCapture, user: &str, token: &str, sql: &str) -> (bool, String) {
    let out = psql(pg, &url(capture, user, token), &["-At", "-c", sql]);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(provider: &OidcProvider, sub: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": provider.issuer, "aud": "pgtrail", "sub": sub, "preferred_username": sub,
        "iat": now(), "exp": now() + 600, "name": "Forged", "groups": ["dba"],
    })
}

fn sign(key_pem: &Path, kid: &str, claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(key_pem).expect("key")).expect("RSA key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn connections_received(pg: &LocalPg) -> usize {
    pg.log().matches("connection received").count()
}

fn failed_logins(events: &[ActivityEvent]) -> Vec<&ActivityEvent> {
    events.iter().filter(|e| e.class == EventClass::Connect && e.sql_state.is_some()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_log_in_as_the_mapped_user_and_events_name_the_person() {
    let Setup { provider, tls, ca_dir, pg } = Setup::start();
    let capture = token_proxy(&pg, &tls, oidc_auth(&provider, ca_dir.path()), Default::default()).await;

    // A real ID token from the provider's token endpoint (authorization code flow).
    let alice = provider.id_token("alice");
    let (ok, out) = login(&pg, &capture, "alice", &alice, "SELECT current_user, sum(balance) FROM accounts");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "alice|300");
    // The group mapping: alice is in dba, which may use postgres.
    let (ok, out) = login(&pg, &capture, "postgres", &alice, "SELECT current_user");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "postgres");
    // Without TLS the proxy does not even ask for the token.
    let plain =
        psql(&pg, &format!("{}?sslmode=disable", capture.url("alice", &alice, "postgres")), &["-c", "SELECT 1"]);
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("token login needs TLS"), "{plain:?}");

    let events = capture
        .wait_for("both sessions and the refused one", |e| {
            e.iter().filter(|e| e.class == EventClass::Disconnect).count() >= 2 && !failed_logins(e).is_empty()
        })
        .await;
    let expected = Identity {
        issuer: provider.issuer.clone(),
        subject: "alice".into(),
        name: Some("Alice".into()),
        email: Some("alice@example.com".into()),
        groups: vec!["dba".into(), "engineering".into()],
        token_id: None,
        auth_method: "oidc".into(),
    };
    let alice_events: Vec<_> = events.iter().filter(|e| e.sql_state.is_none()).collect();
    assert!(alice_events.len() >= 6, "{}", describe(&events));
    for e in &alice_events {
        assert_eq!(e.identity.as_deref(), Some(&expected), "{e:?}");
    }
    // The refused plain-text attempt is a failed login, with no identity.
    let failed = failed_logins(&events);
    assert_eq!(failed.len(), 1, "{}", describe(&events));
    assert_eq!(failed[0].sql_state.as_deref(), Some("28000"));
    assert!(failed[0].identity.is_none());
    capture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_reach_nothing() {
    let Setup { provider, tls, ca_dir, pg } = Setup::start();
    let capture = token_proxy(&pg, &tls, oidc_auth(&provider, ca_dir.path()), Default::default()).await;
    let key_dir = provider.key_file.parent().expect("dir").to_path_buf();

    // A short-lived real token works while valid...
    let short = provider.tokens("alice", 5)["id_token"].as_str().expect("id_token").to_owned();
    let (ok, out) = login(&pg, &capture, "alice", &short, "SELECT 1");
    assert!(ok, "{out}");
    let received_before = connections_received(&pg);
    assert!(received_before > 0, "log_connections shows the proxy's logins: {}", pg.log());
    // ... and is refused once its exp has passed (clock skew 0 in this test).
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(short.split('.').nth(1).expect("payload"));
    let exp = serde_json::from_slice::<serde_json::Value>(&payload.expect("base64")).expect("claims")["exp"]
        .as_i64()
        .expect("exp");
    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let valid = provider.id_token("alice");
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&parts[1]).expect("payload");
    parts[1] = b64(String::from_utf8(payload).expect("utf8").replace("\"alice\"", "\"bob\"").as_bytes());
    let tampered = parts.join(".");
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(&provider, "alice").to_string().as_bytes())
    );
    let hs256_with_public_key = {
        let public = std::fs::read(key_dir.join("public-key.pem")).expect("public key");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(provider.kid.clone());
        jsonwebtoken::encode(&header, &claims(&provider, "alice"), &EncodingKey::from_secret(&public)).expect("sign")
    };
    let with = |changes: serde_json::Value| {
        let mut c = claims(&provider, "alice");
        for (k, v) in changes.as_object().expect("object") {
            c[k] = v.clone();
        }
        sign(&provider.key_file, &provider.kid, &c)
    };
    let access_token = provider.tokens("alice", 600)["access_token"].as_str().expect("access_token").to_owned();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("expired, replayed after expiry", short, "alice", "token has expired"),
        ("expired", with(serde_json::json!({"iat": now() - 120, "exp": now() - 60})), "alice", "token has expired"),
        ("not yet valid", with(serde_json::json!({"nbf": now() + 300})), "alice", "not valid yet"),
        ("issued in the future", with(serde_json::json!({"iat": now() + 300})), "alice", "not valid yet"),
        ("older than the maximum age", with(serde_json::json!({"iat": now() - 3600})), "alice", "older than"),
        ("wrong audience (forged)", with(serde_json::json!({"aud": "another-app"})), "alice", "audience"),
        ("wrong audience (a real access token)", access_token, "alice", "audience"),
        ("wrong issuer", with(serde_json::json!({"iss": "https://evil.example"})), "alice", "issuer"),
        ("bad signature", tampered, "alice", "signature is invalid"),
        ("alg none", none, "alice", "not a token"),
        ("HS256 signed with the public key", hs256_with_public_key, "alice", "algorithm"),
        (
            "unknown kid",
            sign(&key_dir.join("other-key.pem"), "rotated-away", &claims(&provider, "alice")),
            "alice",
            "unknown key",
        ),
        (
            "known kid, other key",
            sign(&key_dir.join("other-key.pem"), &provider.kid, &claims(&provider, "alice")),
            "alice",
            "signature is invalid",
        ),
        ("bob's token used as alice", provider.id_token("bob"), "alice", "may not log in as database user"),
        ("bob's token used as postgres", provider.id_token("bob"), "postgres", "may not log in as database user"),
        ("not a token at all", "hunter2".into(), "alice", "not a token"),
    ];
    for (case, token, user, message) in &cases {
        let (ok, out) = login(&pg, &capture, user, token, "SELECT 1");
        assert!(!ok, "{case}: logged in");
        assert!(out.contains(message), "{case}: {out}");
    }
    let refused = capture.proxy_stats().token_logins_refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, cases.len() as u64);
    // Nothing of a refused login reached PostgreSQL: the proxy did not even connect.
    assert_eq!(connections_received(&pg), received_before, "{}", pg.log());

    let events = capture.wait_for("failed logins", |e| failed_logins(e).len() >= cases.len()).await;
    let failed = failed_logins(&events);
    assert_eq!(failed.len(), cases.len(), "{}", describe(&events));
    for (event, (case, _, user, _)) in failed.iter().zip(&cases) {
        let expected = if case.starts_with("bob's") { "28000" } else { "28P01" };
        assert_eq!(event.sql_state.as_deref(), Some(expected), "{case}");
        assert_eq!(event.db_user_name.as_deref(), Some(*user), "{case}");
        // A valid token for the wrong user still says whose it was.
        let subject = event.identity.as_ref().map(|i| i.subject.as_str());
        assert_eq!(subject, case.starts_with("bob's").then_some("bob"), "{case}");
    }
    capture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_tokens_and_upstream_secrets() {
    // PostgreSQL with SCRAM passwords; the proxy holds them in a 0600 secrets file, and
    // people log in with pgtrail local tokens.
    let tls = TlsFiles::generate();
    let pg = start_pg_with(LocalPgOptions {
        auth: HostAuth::ScramSha256,
        superuser_password: PASSWORD.into(),
        tls: Some((tls.cert_pem.clone(), tls.key_pem.clone())),
        ..Default::default()
    });
    pg.psql("CREATE ROLE reporting LOGIN PASSWORD 'reporting-secret'").expect("role");
    let dir = tempfile::tempdir().expect("dir");
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(&secrets, "reporting = \"reporting-secret\"\n").expect("write");
    let key_dir = dir.path().join("token-keys");
    let issue = |args: &[&str]| {
        let mut all = vec!["token", "issue", "--key-dir", key_dir.to_str().expect("utf8")];
        all.extend_from_slice(args);
        assert_ok(&run_pgtrail(&all)).trim().to_owned()
    };
    let carol = issue(&["--user", "carol", "--db-user", "reporting", "--name", "Carol", "--group", "auditors"]);
    let dave = issue(&["--user", "dave", "--ttl", "5m"]);

    // A secrets file others can read is refused at start.
    let auth = AuthConfig {
        client: ClientAuth::Token,
        upstream: UpstreamLogin::Secrets,
        local_token_key: Some(key_dir.join(pgtrail_identity::local::PUBLIC_FILE)),
        secrets_file: Some(secrets.clone()),
        ..AuthConfig::default()
    };
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut config = capture_config(&pg, &dir.path().join("journal"));
    config.proxy.client_tls = Some(ClientTlsConfig { cert_file: tls.cert_path(), key_file: tls.key_path() });
    config.proxy.auth = auth.clone();
    let refused = pgtrail_capture::Capture::start(config).await;
    let Err(refused) = refused else { panic!("a group-readable secrets file was accepted") };
    assert!(format!("{refused:#}").contains("chmod 600"), "{refused:#}");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let capture = token_proxy(&pg, &tls, auth, Default::default()).await;
    let (ok, out) = login(&pg, &capture, "reporting", &carol, "SELECT current_user");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "reporting");
    // carol's token names only reporting; dave has no upstream secret.
    let (ok, out) = login(&pg, &capture, "postgres", &carol, "SELECT 1");
    assert!(!ok && out.contains("may not log in"), "{out}");
    let (ok, out) = login(&pg, &capture, "dave", &dave, "SELECT 1");
    assert!(!ok && out.contains("no upstream secret"), "{out}");

    let events = capture.wait_for("carol's statement", |e| !statements(e).is_empty()).await;
    let select = statements(&events)[0];
    let identity = select.identity.as_deref().expect("identity");
    assert_eq!(identity.issuer, "pgtrail-local");
    assert_eq!(identity.subject, "carol");
    assert_eq!(identity.name.as_deref(), Some("Carol"));
    assert_eq!(identity.groups, vec!["auditors".to_owned()]);
    assert_eq!(identity.auth_method, "local-token");
    assert!(identity.token_id.is_some());
    capture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denies_before_postgres_sees_it() {
    let Setup { provider, tls, ca_dir, pg } = Setup::start();
    pg.psql("ALTER SYSTEM SET log_statement = 'all'").expect("log statements");
    pg.psql("SELECT pg_reload_conf()").expect("reload");
    let policy: pgtrail_proxy::PolicyConfig = serde_json::from_value(serde_json::json!({
        "password_admins": ["carol@example.com"],
        "deny": [
            {"name": "no DDL for humans", "when": "class == \"DDL\" && identity != null",
             "message": "people may not change the schema in production"},
            {"name": "no COPY PROGRAM", "when": "copyProgram", "message": "COPY PROGRAM is not allowed"},
            {"name": "no unfiltered writes on accounts",
             "when": "command in [\"UPDATE\", \"DELETE\"] && !hasWhere && objects.exists(o, o.name == \"accounts\")",
             "message": "UPDATE and DELETE on accounts need a WHERE clause"},
        ],
    }))
    .expect("policy");
    let capture = token_proxy(&pg, &tls, oidc_auth(&provider, ca_dir.path()), policy).await;
    let alice = provider.id_token("alice");
    let url = url(&capture, "alice", &alice);

    // Simple protocol, one session: each denied statement fails with 42501 and the
    // session goes on.
    let out = psql(
        &pg,
        &url,
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-v",
            "VERBOSITY=verbose",
            "-At",
            "-c",
            "ALTER USER alice PASSWORD 'hunter2'",
            "-c",
            "CREATE TABLE t (x int)",
            "-c",
            "DELETE FROM accounts",
            "-c",
            "COPY accounts TO PROGRAM 'cat > /tmp/pgtrail-exfiltrated'",
            "-c",
            "DELETE FROM accounts WHERE id = 99",
            "-c",
            "SELECT 'still here'",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("ERROR:  42501: pgtrail:").count(), 4, "{stderr}");
    assert!(stderr.contains("setting a password is restricted"), "{stderr}");
    assert!(
        stderr
            .contains("pgtrail: people may not change the schema in production (denied by rule \"no DDL for humans\")"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("still here"), "{out:?}");

    // psql's \password: psql hashes the new password itself and sends ALTER USER ...
    // PASSWORD 'SCRAM-SHA-256$...'. Run without a controlling terminal (setsid), psql reads
    // the new password from stdin.
    let mut child = std::process::Command::new("setsid")
        .arg(pg.binaries().bin("psql"))
        .arg(&url)
        .args(["-X", "-v", "VERBOSITY=verbose", "-c", "\\password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"new-secret\nnew-secret\n").expect("write");
    let out = child.wait_with_output().expect("psql ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("42501") && stderr.contains("setting a password is restricted"), "{out:?}");

    // Extended protocol (pgbench -M extended): the Parse is denied, the batch fails.
    let script = ca_dir.path().join("delete-all.sql");
    std::fs::write(&script, "DELETE FROM accounts;\n").expect("script");
    let bench = std::process::Command::new(pg.binaries().bin("pgbench"))
        .args(["-n", "-M", "extended", "-t", "1", "-f"])
        .arg(&script)
        .arg(&url)
        .output()
        .expect("pgbench runs");
    assert!(!bench.status.success());
    assert!(String::from_utf8_lossy(&bench.stderr).contains("need a WHERE clause"), "{bench:?}");

    // PostgreSQL never saw the denied statements; it saw the allowed one.
    let log = pg.log();
    assert!(log.contains("DELETE FROM accounts WHERE id = 99"), "{log}");
    for never in
        ["hunter2", "CREATE TABLE t", "TO PROGRAM", "DELETE FROM accounts;", "statement: DELETE FROM accounts\n"]
    {
        assert!(!log.contains(never), "{never:?} reached PostgreSQL:\n{log}");
    }
    assert_eq!(pg.psql("SELECT count(*) FROM accounts").expect("count").trim(), "2");

    let events = capture.wait_for("denied statements", |e| e.iter().filter(|e| e.verdict.is_some()).count() >= 6).await;
    let denied: Vec<_> = events.iter().filter(|e| e.verdict.is_some()).collect();
    let rules: Vec<_> = denied.iter().map(|e| e.denied_by.as_deref().unwrap_or("")).collect();
    assert_eq!(
        rules,
        [
            "restrict_password_commands",
            "no DDL for humans",
            "no unfiltered writes on accounts",
            "no COPY PROGRAM",
            "restrict_password_commands",
            "no unfiltered writes on accounts"
        ],
        "{}",
        describe(&events)
    );
    for e in &denied {
        assert_eq!(e.sql_state.as_deref(), Some("42501"));
        assert_eq!(e.identity.as_ref().map(|i| i.subject.as_str()), Some("alice"));
        let text = e.command_text.as_deref().unwrap_or("");
        assert!(!text.contains("hunter2") && !text.contains("SCRAM-SHA-256$"), "{e:?}");
    }
    assert_eq!(denied[1].command, "CREATE TABLE");
    assert_eq!(capture.proxy_stats().denied.load(std::sync::atomic::Ordering::Relaxed), 6);
    // The allowed DELETE ran and was recorded as usual.
    assert!(events.iter().any(|e| e.command == "DELETE" && e.verdict.is_none() && e.sql_state.is_none()));
    capture.stop().await;
}

/// `token = "access_token"`: the API's audience, and the person's id from `sub`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_when_configured() {
    let Setup { provider, tls, ca_dir, pg } = Setup::start();
    let mut auth = oidc_auth(&provider, ca_dir.path());
    let oidc = auth.oidc.as_mut().expect("oidc");
    oidc.audience = "urn:pgtrail:proxy".into();
    oidc.token = pgtrail_identity::TokenKind::AccessToken;
    auth.mapping.user_claim = Some("sub".into());
    let capture = token_proxy(&pg, &tls, auth, Default::default()).await;
    let tokens = provider.tokens("bob", 600);
    let access = tokens["access_token"].as_str().expect("access_token");
    let (ok, out) = login(&pg, &capture, "bob", access, "SELECT current_user");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "bob");
    // Its ID token is for another audience now.
    let (ok, out) = login(&pg, &capture, "bob", tokens["id_token"].as_str().expect("id_token"), "SELECT 1");
    assert!(!ok && out.contains("audience"), "{out}");
    let events = capture.wait_for("bob's statement", |e| !statements(e).is_empty()).await;
    let identity = statements(&events)[0].identity.as_deref().expect("identity");
    assert_eq!((identity.subject.as_str(), identity.email.as_deref()), ("bob", Some("bob@example.com")));
    assert!(identity.token_id.is_some(), "access tokens carry a jti");
    assert_eq!(identity.groups, vec!["analysts".to_owned()]);
    capture.stop().await;
}

/// `pgtrail report --kind person`: one person of the identity provider, followed across
/// the database users they logged in as, and no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_report_follows_one_person_across_database_users() {
    let Setup { provider, tls, ca_dir, pg } = Setup::start();
    let mut capture = token_proxy(&pg, &tls, oidc_auth(&provider, ca_dir.path()), Default::default()).await;
    let (alice, bob) = (provider.id_token("alice"), provider.id_token("bob"));
    for (user, token, sql) in [
        ("alice", &alice, "SELECT sum(balance) AS alice_as_alice FROM accounts"),
        ("postgres", &alice, "SELECT 2 AS alice_as_postgres"),
        ("bob", &bob, "SELECT 3 AS bob_as_bob"),
    ] {
        let (ok, out) = login(&pg, &capture, user, token, sql);
        assert!(ok, "{out}");
    }
    capture.wait_for("three sessions", |e| e.iter().filter(|e| e.class == EventClass::Disconnect).count() >= 3).await;
    capture.shutdown().await;
    let (journal, keys) = (capture.journal_dir().to_path_buf(), capture.keys_dir());
    let dir = tempfile::tempdir().unwrap();
    let (archive, report) = (dir.path().join("archive"), dir.path().join("alice.json"));
    archive_journal(&journal, &keys, &archive, &[]);
    let args = ["--kind", "person", "--person", "alice@example.com", "--from", "2026-01-01", "--format", "json"];
    let out = pgtrail_testkit::report(&archive, &journal, &keys, &report, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let field = |name: &str| -> Vec<&str> { rows.iter().map(|r| r[name].as_str().unwrap()).collect() };
    assert!(field("person").iter().all(|p| *p == "alice@example.com"), "{rows:#?}");
    let mut users = field("database user");
    users.sort();
    users.dedup();
    assert_eq!(users, ["alice", "postgres"]);
    let texts = field("text");
    assert!(
        texts.iter().any(|t| t.contains("alice_as_alice")) && texts.iter().any(|t| t.contains("alice_as_postgres"))
    );
    assert!(!texts.iter().any(|t| t.contains("bob_as_bob")), "{texts:?}");
    assert_eq!(report["summary"]["people"], 1);
    assert_eq!(report["summary"]["database_users"], 2);
    assert_eq!(report["integrity"]["verified"], true, "{:#}", report["integrity"]);
}
