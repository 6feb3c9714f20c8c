//! The reference vectors in `testdata/das` (made with the official AWS Encryption SDK and
//! an independent reference encoder, not by pgtrail): every deterministic vector is
//! reproduced byte for byte, every unsigned SDK vector decodes, every negative vector is
//! refused, and the real Aurora record's header parses.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use pgtrail_envelope::EnvelopeError;
use pgtrail_envelope::das::{DasEnvelope, gunzip_one_member, gzip};
use pgtrail_envelope::message::{self, MessageNonces, RawAesKey, Suite, parse_header};
use serde_json::Value;
use zeroize::Zeroizing;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/das")
}

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(data_dir().join("vectors.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all["vectors"].as_array().unwrap().clone()
}

fn hex_field(v: &Value, path: &[&str]) -> Vec<u8> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    hex::decode(cur.as_str().unwrap_or_else(|| panic!("{path:?} missing"))).unwrap()
}

fn wrapping_key(v: &Value) -> RawAesKey {
    RawAesKey::das(hex_field(v, &["wrapping_key_hex"]).try_into().unwrap())
}

fn suite_of(v: &Value) -> u16 {
    u16::from_str_radix(v["suite_id"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn plaintext_of(v: &Value) -> Vec<u8> {
    if v.get("plaintext_gzip_hex").is_some() {
        hex_field(v, &["plaintext_gzip_hex"])
    } else {
        hex_field(v, &["plaintext_hex"])
    }
}

#[test]
fn deterministic_vectors_are_reproduced_byte_for_byte() {
    let mut checked = 0;
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        if !(name.starts_with("det_") || name.starts_with("esdk_")) {
            continue;
        }
        let suite = Suite::from_id(suite_of(&v)).unwrap();
        let nonces = MessageNonces {
            message_id: hex_field(&v, &["inputs", "message_id_hex"]),
            message_key: Zeroizing::new(hex_field(&v, &["inputs", "message_data_key_hex"]).try_into().unwrap()),
            edk_iv: hex_field(&v, &["inputs", "edk_iv_hex"]).try_into().unwrap(),
        };
        let frame_length = v["frame_length"].as_u64().unwrap() as u32;
        let expected = BASE64.decode(v["ciphertext_b64"].as_str().unwrap()).unwrap();
        let plaintext = plaintext_of(&v);
        if v["exact_multiple_policy"] == "full_final" || !plaintext.len().is_multiple_of(frame_length as usize) {
            let ours = message::encrypt_with(&wrapping_key(&v), suite, &plaintext, &nonces, frame_length);
            assert_eq!(hex::encode(&ours), hex::encode(&expected), "{name}: encoder output differs");
        }
        // Both policies decode, and to the same plaintext.
        assert_eq!(message::decrypt(&wrapping_key(&v), &expected).unwrap(), plaintext, "{name}: decode");
        // The .bin file is the same message.
        let bin = std::fs::read(data_dir().join(format!("{name}.ciphertext.bin"))).unwrap();
        assert_eq!(bin, expected, "{name}: .bin differs from vectors.json");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} deterministic vectors found");
}

#[test]
fn det_records_decrypt_to_their_plaintext_json() {
    let mut checked = 0;
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let Some(plaintext_json) = v["plaintext_json"].as_str() else { continue };
        if [0x0578, 0x0378].contains(&suite_of(&v)) {
            continue;
        }
        let envelope_file = std::fs::read(data_dir().join(format!("{name}.envelope.json"))).unwrap();
        let envelope = DasEnvelope::parse(&envelope_file).unwrap();
        let message = envelope.message().unwrap();
        let inner = gunzip_one_member(&message::decrypt(&wrapping_key(&v), &message).unwrap()).unwrap();
        assert_eq!(String::from_utf8(inner).unwrap(), plaintext_json, "{name}");
        let expected_file = std::fs::read_to_string(data_dir().join(format!("{name}.plaintext.json"))).unwrap();
        assert_eq!(expected_file.trim_end(), plaintext_json, "{name}: .plaintext.json");
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} record vectors found");
}

#[test]
fn sdk_vectors_of_unsigned_suites_decode_and_signed_ones_are_named() {
    let mut decoded = 0;
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        if !name.starts_with("sdk_") {
            continue;
        }
        let message = BASE64.decode(v["ciphertext_b64"].as_str().unwrap()).unwrap();
        match suite_of(&v) {
            0x0178 | 0x0478 => {
                let gz = message::decrypt(&wrapping_key(&v), &message).unwrap();
                assert_eq!(gz, hex_field(&v, &["plaintext_gzip_hex"]), "{name}");
                decoded += 1;
            }
            id => {
                let header = parse_header(&message).unwrap();
                assert_eq!(header.suite_id, id);
                assert!(
                    matches!(message::decrypt(&wrapping_key(&v), &message), Err(EnvelopeError::SignedSuite(s)) if s == id),
                    "{name}"
                );
            }
        }
    }
    assert_eq!(decoded, 3);
}

#[test]
fn rustgen_records_decrypt_with_their_own_keys() {
    for name in ["rustgen_0178.json", "rustgen_0478.json"] {
        let v: Value = serde_json::from_slice(&std::fs::read(data_dir().join(name)).unwrap()).unwrap();
        let envelope = DasEnvelope::parse(v["envelope"].to_string().as_bytes()).unwrap();
        let inner =
            gunzip_one_member(&message::decrypt(&wrapping_key(&v), &envelope.message().unwrap()).unwrap()).unwrap();
        assert_eq!(String::from_utf8(inner).unwrap(), v["plaintext_json"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn negative_vectors_are_refused() {
    let key = RawAesKey::das(
        hex::decode("36c5f3fcb18fd06e1c2f474d03f9ef1587b98671fd3f6325899b3034ee7feec3").unwrap().try_into().unwrap(),
    );
    let mut seen = 0;
    for entry in std::fs::read_dir(data_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.starts_with("neg_") {
            continue;
        }
        let message = std::fs::read(&path).unwrap();
        // The wrong-key vector is a good message: it must open with the right key and
        // be refused with any other.
        let result = if name.contains("wrong_wrapping_key") {
            assert!(message::decrypt(&key, &message).is_ok(), "{name}: the right key must open it");
            let mut wrong = *key.bytes();
            wrong[31] ^= 1;
            message::decrypt(&RawAesKey::das(wrong), &message)
        } else {
            message::decrypt(&key, &message)
        };
        assert!(result.is_err(), "{name} was accepted");
        let err = result.unwrap_err();
        let expected = if name.contains("tampered_body") {
            matches!(err, EnvelopeError::Authentication("frame"))
        } else if name.contains("commitkey") {
            matches!(err, EnvelopeError::CommitmentMismatch | EnvelopeError::Authentication("header"))
        } else {
            matches!(err, EnvelopeError::NoMatchingDataKey)
        };
        assert!(expected, "{name}: unexpected error {err}");
        seen += 1;
    }
    assert_eq!(seen, 4);
}

#[test]
fn real_aurora_record_header_parses() {
    let record = std::fs::read(data_dir().join("real_aurora_record_public_sample.json")).unwrap();
    let envelope = DasEnvelope::parse(&record).unwrap();
    assert_eq!(envelope.version, "1.1");
    let header = parse_header(&envelope.message().unwrap()).unwrap();
    assert_eq!((header.version, header.suite_id, header.content_type, header.frame_length), (1, 0x0178, 2, 4096));
    assert_eq!(header.message_id.len(), 16);
    assert!(header.encryption_context.is_empty());
    assert_eq!(header.encrypted_data_keys.len(), 1);
    let edk = &header.encrypted_data_keys[0];
    assert_eq!(edk.provider_id, b"BC");
    assert!(edk.provider_info.starts_with(b"DataKey"));
    assert_eq!(edk.ciphertext.len(), 48);
}

#[test]
fn parsed_fields_match_the_vectors_offsets() {
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let message = BASE64.decode(v["ciphertext_b64"].as_str().unwrap()).unwrap();
        let header = parse_header(&message).unwrap();
        for field in v["parsed_fields"].as_array().unwrap() {
            let offset = field["offset"].as_u64().unwrap() as usize;
            let length = field["length"].as_u64().unwrap() as usize;
            let bytes = hex::decode(field["hex"].as_str().unwrap()).unwrap();
            assert_eq!(&message[offset..offset + length], &bytes[..], "{name} {}", field["name"]);
            match field["name"].as_str().unwrap() {
                "message_id" => assert_eq!(header.message_id, bytes, "{name}"),
                "frame_length" => assert_eq!(header.frame_length.to_be_bytes().to_vec(), bytes, "{name}"),
                _ => {}
            }
        }
    }
}

#[test]
fn our_records_round_trip_through_gzip_and_every_flipped_byte_is_refused() {
    let key = RawAesKey::das([7u8; 32]);
    for suite in [Suite::Aes256GcmHkdfSha256, Suite::Aes256GcmHkdfSha512Commit] {
        for len in [0usize, 1, 4095, 4096, 4097, 8192, 20_000] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let message = message::encrypt(&key, suite, &plaintext);
            assert_eq!(message::decrypt(&key, &message).unwrap(), plaintext, "{suite:?} {len}");
        }
        let message = message::encrypt(&key, suite, &gzip(b"{\"type\":\"heartbeat\"}", 1));
        for i in 0..message.len() {
            let mut bad = message.clone();
            bad[i] ^= 0x40;
            assert!(message::decrypt(&key, &bad).is_err(), "{suite:?}: byte {i} flipped was accepted");
        }
        assert!(message::decrypt(&key, &message[..message.len() - 1]).is_err());
        let mut longer = message.clone();
        longer.push(0);
        assert!(matches!(message::decrypt(&key, &longer), Err(EnvelopeError::TrailingBytes(1))));
    }
}

#[test]
fn two_gzip_members_are_refused() {
    let mut two = gzip(b"{\"a\":1}", 1);
    two.extend(gzip(b"{\"b\":2}", 1));
    assert!(matches!(gunzip_one_member(&two), Err(EnvelopeError::GzipMembers)));
    assert_eq!(gunzip_one_member(&gzip(b"{\"a\":1}", 6)).unwrap(), b"{\"a\":1}");
}
