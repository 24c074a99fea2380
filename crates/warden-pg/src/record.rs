//! A record value in text format, as PostgreSQL writes it (`(1,alice,"a, b",)`):
//! read into fields, each masked by its column's plan, written back the way the
//! server's `record_out` quotes.

use warden_core::{ColumnPlan, Masked, Masker};

/// Masks each field of a text-format record with the plan of the table column it
/// holds; a record that cannot be read, or whose fields do not match, becomes NULL.
pub(crate) fn mask_record_text(
    masker: &dyn Masker,
    value: &[u8],
    fields: &[(ColumnPlan, u32)],
) -> Masked {
    let Some(parsed) = parse(value) else {
        return Masked::Null;
    };
    if parsed.len() != fields.len() {
        return Masked::Null;
    }
    let mut changed = false;
    let masked: Vec<Option<Vec<u8>>> = parsed
        .into_iter()
        .zip(fields)
        .map(|(field, (plan, _))| match field {
            None => None,
            Some(bytes) => match masker.mask(*plan, &bytes) {
                Masked::Unchanged => Some(bytes),
                Masked::Replaced(r) => {
                    changed = true;
                    Some(r)
                }
                Masked::Null => {
                    changed = true;
                    None
                }
            },
        })
        .collect();
    if !changed {
        return Masked::Unchanged;
    }
    Masked::Replaced(write(&masked))
}

/// The fields of `(a,b,...)`: `None` for an empty (NULL) field.
fn parse(value: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
    let inner = value.strip_prefix(b"(")?.strip_suffix(b")")?;
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let mut field = Vec::new();
        let mut quoted = false;
        let mut any = false;
        while i < inner.len() && inner[i] != b',' {
            match inner[i] {
                b'"' => {
                    quoted = true;
                    i += 1;
                    loop {
                        match inner.get(i)? {
                            b'"' if inner.get(i + 1) == Some(&b'"') => {
                                field.push(b'"');
                                i += 2;
                            }
                            b'"' => {
                                i += 1;
                                break;
                            }
                            b'\\' => {
                                field.push(*inner.get(i + 1)?);
                                i += 2;
                            }
                            c => {
                                field.push(*c);
                                i += 1;
                            }
                        }
                    }
                }
                b'\\' => {
                    field.push(*inner.get(i + 1)?);
                    i += 2;
                }
                c => {
                    field.push(c);
                    i += 1;
                }
            }
            any = true;
        }
        fields.push((any || quoted).then_some(field));
        if i >= inner.len() {
            return Some(fields);
        }
        i += 1;
    }
}

/// `(a,b,...)`, quoting as `record_out` does: fields that are empty or hold a quote,
/// backslash, parenthesis, comma or white space are quoted, with `"` and `\` doubled.
fn write(fields: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = vec![b'('];
    for (n, field) in fields.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let Some(f) = field else {
            continue;
        };
        let quote = f.is_empty()
            || f.iter()
                .any(|c| matches!(c, b'"' | b'\\' | b'(' | b')' | b',') || c.is_ascii_whitespace());
        if quote {
            out.push(b'"');
        }
        for c in f {
            if quote && matches!(c, b'"' | b'\\') {
                out.push(*c);
            }
            out.push(*c);
        }
        if quote {
            out.push(b'"');
        }
    }
    out.push(b')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_and_write_back_as_the_server_does() {
        for text in [
            &b"(1,alice,123-45-6789)"[..],
            b"(1,,\"\")",
            b"(\"a, b\",\"say \"\"hi\"\"\",\"back\\\\slash\")",
            b"()",
        ] {
            let parsed = parse(text).unwrap();
            assert_eq!(write(&parsed), text, "{}", String::from_utf8_lossy(text));
        }
        assert_eq!(
            parse(b"(1,,\"\")").unwrap(),
            vec![Some(b"1".to_vec()), None, Some(Vec::new())]
        );
        assert!(parse(b"(1,\"open").is_none());
        assert!(parse(b"1,2").is_none());
    }
}
