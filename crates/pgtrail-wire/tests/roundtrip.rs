//! Every message encodes and decodes back to itself, and decodes byte-identical to what
//! a real peer sends (the hand-written frames below follow the protocol documentation,
//! not this crate's encoder).

use bytes::{Bytes, BytesMut};
use pgtrail_wire::*;

fn frontend_roundtrip(msg: FrontendMessage) {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf);
    let encoded = buf.clone();
    let decoded = decode_frontend(&mut buf, &Limits::default()).unwrap().unwrap();
    assert_eq!(decoded, msg);
    assert!(buf.is_empty(), "decoder consumed exactly one frame");
    let mut again = BytesMut::new();
    decoded.encode(&mut again);
    assert_eq!(again, encoded, "re-encoding is byte identical");
    // Every strict prefix is incomplete, not an error.
    for cut in 0..encoded.len() {
        let mut partial = BytesMut::from(&encoded[..cut]);
        assert_eq!(decode_frontend(&mut partial, &Limits::default()).unwrap(), None, "{msg:?} cut at {cut}");
    }
}

fn backend_roundtrip(msg: BackendMessage) {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf);
    let encoded = buf.clone();
    let decoded = decode_backend(&mut buf, &Limits::default()).unwrap().unwrap();
    assert_eq!(decoded, msg);
    assert!(buf.is_empty());
    let mut again = BytesMut::new();
    decoded.encode(&mut again);
    assert_eq!(again, encoded);
    for cut in 0..encoded.len() {
        let mut partial = BytesMut::from(&encoded[..cut]);
        assert_eq!(decode_backend(&mut partial, &Limits::default()).unwrap(), None);
    }
}

fn startup_roundtrip(msg: StartupMessage) {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf);
    let decoded = decode_startup(&mut buf, &Limits::default()).unwrap().unwrap();
    assert_eq!(decoded, msg);
    assert!(buf.is_empty());
}

#[test]
fn startup_phase_messages() {
    startup_roundtrip(StartupMessage::Startup {
        version: PROTOCOL_V3,
        params: vec![("user".into(), "alice".into()), ("database".into(), "bank".into())],
    });
    startup_roundtrip(StartupMessage::SslRequest);
    startup_roundtrip(StartupMessage::GssEncRequest);
    startup_roundtrip(StartupMessage::CancelRequest { pid: 4242, secret: Bytes::from_static(&[1, 2, 3, 4]) });
}

#[test]
fn startup_matches_libpq_bytes() {
    // What libpq sends for `user=u` with protocol 3.0.
    let wire: &[u8] = b"\0\0\0\x10\0\x03\0\0user\0u\0\0";
    let mut buf = BytesMut::from(wire);
    let msg = decode_startup(&mut buf, &Limits::default()).unwrap().unwrap();
    assert_eq!(msg.param("user"), Some("u"));
    let ssl: &[u8] = &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut buf = BytesMut::from(ssl);
    assert_eq!(decode_startup(&mut buf, &Limits::default()).unwrap(), Some(StartupMessage::SslRequest));
}

#[test]
fn startup_rejects_garbage_and_oversize() {
    let limits = Limits::default();
    let mut garbage = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    assert!(decode_startup(&mut garbage, &limits).is_err());
    let mut huge = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0][..]);
    assert!(matches!(decode_startup(&mut huge, &limits), Err(WireError::TooLarge { .. })));
    let mut v2 = BytesMut::from(&[0, 0, 0, 8, 0, 2, 0, 0][..]);
    assert!(matches!(decode_startup(&mut v2, &limits), Err(WireError::UnsupportedProtocol { major: 2, .. })));
}

#[test]
fn every_frontend_message() {
    let b = Bytes::from_static;
    frontend_roundtrip(FrontendMessage::Query { query: "SELECT 1; SELECT 2".into() });
    frontend_roundtrip(FrontendMessage::Parse {
        name: "s1".into(),
        query: "SELECT $1".into(),
        param_types: vec![23, 0],
    });
    frontend_roundtrip(FrontendMessage::Bind {
        portal: "".into(),
        statement: "s1".into(),
        param_formats: vec![0, 1],
        params: vec![Some(b(b"42")), None, Some(b(&[0xde, 0xad]))],
        result_formats: vec![1],
    });
    frontend_roundtrip(FrontendMessage::Describe { kind: TargetKind::Statement, name: "s1".into() });
    frontend_roundtrip(FrontendMessage::Describe { kind: TargetKind::Portal, name: "".into() });
    frontend_roundtrip(FrontendMessage::Execute { portal: "p".into(), max_rows: 100 });
    frontend_roundtrip(FrontendMessage::Close { kind: TargetKind::Statement, name: "s1".into() });
    frontend_roundtrip(FrontendMessage::Sync);
    frontend_roundtrip(FrontendMessage::Flush);
    frontend_roundtrip(FrontendMessage::CopyData(b(b"1\talice\n")));
    frontend_roundtrip(FrontendMessage::CopyDone);
    frontend_roundtrip(FrontendMessage::CopyFail { message: "aborted".into() });
    frontend_roundtrip(FrontendMessage::FunctionCall {
        oid: 1598,
        arg_formats: vec![1],
        args: vec![Some(b(&[0, 0, 0, 1])), None],
        result_format: 1,
    });
    frontend_roundtrip(FrontendMessage::AuthResponse(b(b"secret\0")));
    frontend_roundtrip(FrontendMessage::Terminate);
}

#[test]
fn sasl_and_password_bodies() {
    let initial =
        SaslInitialResponse { mechanism: "SCRAM-SHA-256".into(), data: Some(Bytes::from_static(b"n,,n=,r=abc")) };
    let mut buf = BytesMut::new();
    initial.encode(&mut buf);
    let Some(FrontendMessage::AuthResponse(body)) = decode_frontend(&mut buf, &Limits::default()).unwrap() else {
        panic!("not an auth response")
    };
    assert_eq!(SaslInitialResponse::parse(body).unwrap(), initial);
    assert_eq!(FrontendMessage::password(b"md5abc\0"), Some("md5abc"));
    assert_eq!(FrontendMessage::password(b"no-nul"), None);
}

#[test]
fn every_backend_message() {
    let b = Bytes::from_static;
    for auth in [
        Authentication::Ok,
        Authentication::KerberosV5,
        Authentication::CleartextPassword,
        Authentication::Md5Password { salt: [1, 2, 3, 4] },
        Authentication::Gss,
        Authentication::GssContinue(b(b"gss")),
        Authentication::Sspi,
        Authentication::Sasl { mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()] },
        Authentication::SaslContinue(b(b"r=abc,s=salt,i=4096")),
        Authentication::SaslFinal(b(b"v=sig")),
    ] {
        backend_roundtrip(BackendMessage::Authentication(auth));
    }
    backend_roundtrip(BackendMessage::ParameterStatus { name: "server_version".into(), value: "15.18".into() });
    backend_roundtrip(BackendMessage::BackendKeyData { pid: 1234, secret: b(&[9, 8, 7, 6]) });
    backend_roundtrip(BackendMessage::RowDescription(vec![FieldDescription {
        name: "id".into(),
        table_oid: 16384,
        column_id: 1,
        type_oid: 23,
        type_size: 4,
        type_modifier: -1,
        format: 0,
    }]));
    backend_roundtrip(BackendMessage::DataRow(vec![Some(b(b"1")), None, Some(b(b""))]));
    backend_roundtrip(BackendMessage::CommandComplete { tag: "INSERT 0 1".into() });
    backend_roundtrip(BackendMessage::EmptyQueryResponse);
    backend_roundtrip(BackendMessage::ErrorResponse(ErrorFields::new(
        "ERROR",
        "42P01",
        "relation \"x\" does not exist",
    )));
    backend_roundtrip(BackendMessage::NoticeResponse(ErrorFields::new("NOTICE", "00000", "hello")));
    backend_roundtrip(BackendMessage::NotificationResponse { pid: 77, channel: "jobs".into(), payload: "42".into() });
    backend_roundtrip(BackendMessage::ParseComplete);
    backend_roundtrip(BackendMessage::BindComplete);
    backend_roundtrip(BackendMessage::CloseComplete);
    backend_roundtrip(BackendMessage::ParameterDescription(vec![23, 25]));
    backend_roundtrip(BackendMessage::NoData);
    backend_roundtrip(BackendMessage::PortalSuspended);
    backend_roundtrip(BackendMessage::CopyInResponse { format: 0, column_formats: vec![0, 0] });
    backend_roundtrip(BackendMessage::CopyOutResponse { format: 1, column_formats: vec![1] });
    backend_roundtrip(BackendMessage::CopyBothResponse { format: 0, column_formats: vec![] });
    backend_roundtrip(BackendMessage::CopyData(b(b"row\n")));
    backend_roundtrip(BackendMessage::CopyDone);
    backend_roundtrip(BackendMessage::FunctionCallResponse(Some(b(b"t"))));
    backend_roundtrip(BackendMessage::FunctionCallResponse(None));
    backend_roundtrip(BackendMessage::ReadyForQuery { status: b'I' });
    backend_roundtrip(BackendMessage::NegotiateProtocolVersion {
        newest_minor: 0,
        unrecognized: vec!["_pq_.x".into()],
    });
}

#[test]
fn error_fields_accessors() {
    let f = ErrorFields::new("FATAL", "28P01", "password authentication failed for user \"u\"");
    assert!(f.is_fatal());
    assert_eq!(f.code(), Some("28P01"));
    assert!(!ErrorFields::new("ERROR", "42601", "x").is_fatal());
}

#[test]
fn hostile_counts_do_not_allocate() {
    // A Bind claiming 32767 parameters in a 20-byte body must fail, not reserve memory.
    let mut body = Vec::new();
    body.extend_from_slice(b"\0\0");
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&i16::MAX.to_be_bytes());
    body.extend_from_slice(&[0; 8]);
    assert!(FrontendMessage::parse(b'B', Bytes::from(body)).is_err());
    // A DataRow value claiming 2 GiB in a small frame.
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&i32::MAX.to_be_bytes());
    assert!(BackendMessage::parse(b'D', Bytes::from(body)).is_err());
    // Negative counts and lengths other than -1.
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(-2i32).to_be_bytes());
    assert!(BackendMessage::parse(b'D', Bytes::from(body)).is_err());
}

#[test]
fn unknown_tags_and_trailing_bytes_are_errors() {
    assert!(matches!(FrontendMessage::parse(b'z', Bytes::new()), Err(WireError::UnknownTag { .. })));
    assert!(matches!(FrontendMessage::parse(b'S', Bytes::from_static(b"x")), Err(WireError::TrailingBytes { .. })));
    assert!(matches!(BackendMessage::parse(b'Z', Bytes::from_static(b"Q")), Err(WireError::Invalid { .. })));
}
