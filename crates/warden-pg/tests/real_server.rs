//! The decoders against the machine's real PostgreSQL: a login and a query read
//! frame by frame, and a result row masked and re-encoded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test clients write plain TCP, which holds back no unflushed bytes.
#![allow(clippy::disallowed_methods)]

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_core::{ColumnPlan, ColumnRef, Masker, ValueKind};
use warden_pg::results::{ColumnMasking, mask_data_row};
use warden_pg::{BackendDecoder, Frame, PgBackendMessage};
use warden_policy::{Detector, MaskStyle, MaskingEngine, MaskingRules};

async fn read_until_ready(
    stream: &mut tokio::net::TcpStream,
    buf: &mut BytesMut,
) -> Vec<Frame<PgBackendMessage>> {
    let decoder = BackendDecoder::new(1 << 24);
    let mut frames = Vec::new();
    loop {
        while let Some(frame) = decoder.decode(buf).unwrap() {
            let ready = matches!(frame.message, PgBackendMessage::ReadyForQuery { .. });
            let failed = matches!(frame.message, PgBackendMessage::ErrorResponse { .. });
            frames.push(frame);
            if ready || failed && frames.len() == 1 {
                return frames;
            }
        }
        assert!(
            stream.read_buf(buf).await.unwrap() > 0,
            "server closed: {frames:?}"
        );
    }
}

#[tokio::test]
async fn login_query_and_masked_row_from_real_postgres() {
    let host = std::env::var("WARDEN_TEST_PG_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:5432".into());
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();

    let mut startup = BytesMut::new();
    startup.put_i32(0);
    startup.put_i32(196_608);
    startup.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
    let len = startup.len() as i32;
    startup[..4].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&startup).await.unwrap();

    let mut buf = BytesMut::new();
    let frames = read_until_ready(&mut stream, &mut buf).await;
    // scripts/test.sh makes the test cluster trust the superuser on loopback.
    assert!(
        matches!(
            frames[0].message,
            PgBackendMessage::Authentication { code: 0, .. }
        ),
        "expected AuthenticationOk: {:?}",
        frames[0].message
    );
    assert!(frames.iter().any(|f| matches!(&f.message, PgBackendMessage::ParameterStatus { name, .. } if name == "server_version")));
    assert!(
        frames
            .iter()
            .any(|f| matches!(f.message, PgBackendMessage::BackendKeyData { .. }))
    );

    let sql =
        b"SELECT 'mail bob@example.com' AS contact, 42 AS n, NULL::text AS nothing, now() AS at\0";
    let mut q = BytesMut::new();
    q.put_u8(b'Q');
    q.put_i32(sql.len() as i32 + 4);
    q.extend_from_slice(sql);
    stream.write_all(&q).await.unwrap();
    let frames = read_until_ready(&mut stream, &mut buf).await;

    let PgBackendMessage::RowDescription { fields } = &frames[0].message else {
        panic!("{frames:?}");
    };
    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["contact", "n", "nothing", "at"]);
    assert_eq!(fields[1].type_oid, 23);
    assert!(matches!(frames[1].message, PgBackendMessage::DataRow));
    assert!(
        matches!(&frames[2].message, PgBackendMessage::CommandComplete { tag } if tag == "SELECT 1")
    );

    let engine = MaskingEngine::new(
        MaskingRules {
            detectors: vec![(Detector::Email, MaskStyle::Full)],
            custom: vec![],
            columns: vec![],
        },
        b"k",
    )
    .unwrap();
    let kinds = [
        ValueKind::Text,
        ValueKind::Number,
        ValueKind::Text,
        ValueKind::Temporal,
    ];
    let columns: Vec<ColumnMasking> = fields
        .iter()
        .zip(kinds)
        .map(|(f, kind)| {
            ColumnMasking::Mask(engine.plan(&ColumnRef {
                schema: None,
                table: None,
                column: &f.name,
                kind,
            }))
        })
        .collect();
    assert_eq!(columns[3], ColumnMasking::Mask(ColumnPlan::Skip));
    let rewritten = mask_data_row(&frames[1].raw, &columns, &engine)
        .unwrap()
        .expect("the email is masked");
    let text = String::from_utf8_lossy(&rewritten);
    assert!(
        text.contains("mail [redacted:email]") && !text.contains("bob@"),
        "{text}"
    );
    // The rewritten frame is itself a valid DataRow of the same shape.
    let mut again = rewritten.clone();
    let decoded = BackendDecoder::new(1 << 20)
        .decode(&mut again)
        .unwrap()
        .unwrap();
    assert!(matches!(decoded.message, PgBackendMessage::DataRow));
    assert!(again.is_empty());
    assert_eq!(
        mask_data_row(&decoded.raw, &columns, &engine)
            .unwrap()
            .map(|b| b.len()),
        None
    );

    stream.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
}

/// Logs in as each password-auth test role that scripts/test.sh creates.
#[tokio::test]
async fn login_with_scram_md5_cleartext_and_trust() {
    use warden_core::Secret;
    use warden_pg::login::{LoginError, login};
    let host = std::env::var("WARDEN_TEST_PG_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:5432".into());
    for (user, password) in [
        ("warden_t_scram", Some("scram-pw-1")),
        ("warden_t_md5", Some("md5-pw-1")),
        ("warden_t_clear", Some("clear-pw-1")),
        ("postgres", None),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        let secret = password.map(|p| Secret::new(p.to_string()));
        let session = login(
            &mut stream,
            user,
            "postgres",
            secret.as_ref(),
            &[("application_name".into(), "warden-test".into())],
        )
        .await
        .unwrap_or_else(|e| panic!("{user}: {e} (run scripts/test.sh to create the test roles)"));
        assert!(
            session
                .parameters
                .iter()
                .any(|(k, _)| k == "server_version"),
            "{user}"
        );
        assert!(
            session
                .parameters
                .contains(&("application_name".into(), "warden-test".into())),
            "{user}"
        );
        assert_ne!(session.secret_key, 0, "{user}");
    }
    for (user, wrong) in [
        ("warden_t_scram", "nope"),
        ("warden_t_md5", "nope"),
        ("warden_t_clear", "nope"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        let err = login(
            &mut stream,
            user,
            "postgres",
            Some(&Secret::new(wrong.into())),
            &[],
        )
        .await
        .unwrap_err();
        match &err {
            LoginError::Refused { code, .. } => assert_eq!(code, "28P01", "{user}: {err}"),
            other => panic!("{user}: {other}"),
        }
        assert!(
            !err.to_string().contains(wrong),
            "the password leaked into the error: {err}"
        );
    }
    // No password held for a role that needs one: a clear error, nothing sent.
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let err = login(&mut stream, "warden_t_scram", "postgres", None, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::Unsupported(_)), "{err}");
}
