//! A structural check of an answer before any signature is looked at: the shapes that
//! signature-wrapping attacks need (a second assertion, a signature in an odd place,
//! an id twice, a response inside a response) are refused here, whatever the library
//! that checks signatures would make of them. So is a namespace declaration named like
//! an attribute: exclusive canonicalization drops a declaration nothing uses, so one can
//! be added to a signed element without breaking its signature, and a reader that took
//! `xmlns:NotOnOrAfter="2099-…"` for an attribute would read what was never signed.
//! It also reads the unverified `Issuer`, which only ever chooses which configured
//! IdP's keys to check with.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, PrefixDeclaration, ResolveResult};
use quick_xml::reader::NsReader;

use super::Refusal;

const PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";

/// Deepest nesting an answer may have.
const MAX_DEPTH: usize = 64;
/// Most elements an answer may have.
const MAX_ELEMENTS: usize = 20_000;
/// Attribute names SAML readers look up (by local name) on the elements of an answer.
/// A namespace prefix may not be one of them, nor the name of another attribute of its
/// element.
const READ_NAMES: &[&str] = &[
    "ID",
    "Id",
    "id",
    "AssertionID",
    "Name",
    "NameFormat",
    "FriendlyName",
    "Format",
    "NameQualifier",
    "SPNameQualifier",
    "SPProvidedID",
    "Method",
    "NotBefore",
    "NotOnOrAfter",
    "Recipient",
    "InResponseTo",
    "Address",
    "AuthnInstant",
    "SessionIndex",
    "SessionNotOnOrAfter",
    "Destination",
    "IssueInstant",
    "Version",
    "Value",
    "Algorithm",
    "URI",
    "Consent",
    "Type",
    "type",
    "MimeType",
    "Encoding",
    "PrefixList",
];

/// What the check learned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// The Response's own `Issuer`, unverified.
    pub issuer: Option<String>,
    pub encrypted: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Response,
    Assertion,
    EncryptedAssertion,
    Issuer,
    Other,
}

struct Open {
    kind: Kind,
    signatures: usize,
}

/// Checks the shape of a decoded `SAMLResponse`.
pub fn check(xml: &str) -> Result<Shape, Refusal> {
    let malformed = |m: &str| Refusal::Malformed(m.to_string());
    let wrapped = |m: &str| Refusal::Wrapped(m.to_string());
    let mut reader = NsReader::from_str(xml);
    let mut stack: Vec<Open> = Vec::new();
    let mut shape = Shape::default();
    let mut ids = std::collections::HashSet::new();
    let (mut elements, mut responses, mut assertions) = (0usize, 0usize, 0usize);
    let mut root_seen = false;
    // The Response's Issuer, as it is read, until its end.
    let mut issuer = String::new();
    let in_issuer = |stack: &[Open]| stack.len() == 2 && stack[1].kind == Kind::Issuer;
    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| Refusal::Malformed(format!("not well-formed XML: {e}")))?;
        let ns: Option<String> = match ns {
            ResolveResult::Bound(Namespace(n)) => Some(n.to_string()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(_) => return Err(malformed("an undeclared namespace prefix")),
        };
        match event {
            Event::DocType(_) => return Err(malformed("a DOCTYPE")),
            Event::PI(_) => return Err(malformed("a processing instruction")),
            Event::GeneralRef(ref r) => {
                // Character references and the five predefined entities; anything else
                // would need a DTD, which is refused.
                let c = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten()
                } else {
                    match r.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        _ => None,
                    }
                };
                let c = c.ok_or_else(|| malformed("an entity reference"))?;
                if in_issuer(&stack) && shape.issuer.is_none() {
                    issuer.push(c);
                }
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                elements += 1;
                if elements > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(malformed("too many or too deeply nested elements"));
                }
                let local = e.local_name();
                let local = local.as_ref();
                let ns = ns.as_deref();
                let depth = stack.len();
                if depth == 0 {
                    if root_seen {
                        return Err(malformed("more than one root element"));
                    }
                    root_seen = true;
                    if ns != Some(PROTOCOL) || local != "Response" {
                        return Err(malformed("the root is not a samlp:Response"));
                    }
                }
                check_attributes(e, &mut ids)?;
                let kind = match (ns, local) {
                    (Some(PROTOCOL), "Response") => {
                        responses += 1;
                        if responses > 1 {
                            return Err(wrapped("a Response inside the Response"));
                        }
                        Kind::Response
                    }
                    (Some(ASSERTION), "Assertion" | "EncryptedAssertion") => {
                        assertions += 1;
                        if assertions > 1 {
                            return Err(wrapped("more than one assertion"));
                        }
                        if depth != 1 {
                            return Err(wrapped("the assertion is not a child of the Response"));
                        }
                        shape.encrypted = local == "EncryptedAssertion";
                        if shape.encrypted {
                            Kind::EncryptedAssertion
                        } else {
                            Kind::Assertion
                        }
                    }
                    (Some(ASSERTION), "Issuer") => Kind::Issuer,
                    (Some(DSIG), "Signature") => {
                        let parent = stack.last_mut().ok_or_else(|| malformed("no root"))?;
                        let placed = match parent.kind {
                            Kind::Response => depth == 1,
                            Kind::Assertion => depth == 2,
                            _ => false,
                        };
                        if !placed {
                            return Err(wrapped(
                                "a signature outside the Response and the assertion",
                            ));
                        }
                        parent.signatures += 1;
                        if parent.signatures > 1 {
                            return Err(wrapped("two signatures on one element"));
                        }
                        Kind::Other
                    }
                    _ => Kind::Other,
                };
                if matches!(event, Event::Start(_)) {
                    stack.push(Open {
                        kind,
                        signatures: 0,
                    });
                }
            }
            Event::End(_) => {
                if in_issuer(&stack) && shape.issuer.is_none() {
                    shape.issuer = Some(issuer.trim().to_string());
                }
                stack.pop();
            }
            // A carriage return is read as a line feed by one reader and kept by another.
            Event::Text(ref t) if t.contains('\r') => {
                return Err(malformed("a carriage return written as such"));
            }
            Event::Text(ref t) if in_issuer(&stack) && shape.issuer.is_none() => {
                let text = quick_xml::escape::unescape(t)
                    .map_err(|e| Refusal::Malformed(format!("bad text: {e}")))?;
                issuer.push_str(&text);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen {
        return Err(malformed("no root element"));
    }
    if assertions == 0 {
        return Err(malformed("no assertion"));
    }
    Ok(shape)
}

/// An element's attributes: ids unique across the answer (in every spelling a reader
/// may take for one), no two attributes with one local name, and no namespace prefix
/// named like an attribute.
fn check_attributes(
    e: &BytesStart<'_>,
    ids: &mut std::collections::HashSet<String>,
) -> Result<(), Refusal> {
    let wrapped = |m: &str| Refusal::Wrapped(m.to_string());
    let mut names: Vec<String> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|e| Refusal::Malformed(format!("bad attribute: {e}")))?;
        match attr.key.as_namespace_binding() {
            Some(PrefixDeclaration::Named(p)) => prefixes.push(p.to_string()),
            Some(PrefixDeclaration::Default) => {}
            None => {
                let local = attr.key.local_name().as_ref().to_string();
                // Readers differ in how they normalize these (one keeps them, another
                // makes them spaces): a signed value must read one way only.
                if attr.value.contains(['\t', '\n', '\r']) {
                    return Err(Refusal::Malformed(
                        "a tab or line break written as such in an attribute value".into(),
                    ));
                }
                let value = quick_xml::escape::unescape(&attr.value)
                    .map_err(|e| Refusal::Malformed(format!("bad attribute value: {e}")))?;
                if ["id", "assertionid"].contains(&local.to_ascii_lowercase().as_str())
                    && !ids.insert(value.into_owned())
                {
                    return Err(wrapped("two elements carry the same ID"));
                }
                if names.contains(&local) {
                    return Err(wrapped("two attributes with one name on an element"));
                }
                names.push(local);
            }
        }
    }
    // In any case: a reader that looks names up loosely is not outwitted by `xmlns:name`.
    let named_like = |p: &String| {
        READ_NAMES.iter().any(|n| n.eq_ignore_ascii_case(p))
            || names.iter().any(|n| n.eq_ignore_ascii_case(p))
    };
    if prefixes.iter().any(named_like) {
        return Err(wrapped("a namespace prefix named like an attribute"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r##"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="r1"><saml:Issuer>https://idp.example</saml:Issuer><samlp:Status/><saml:Assertion ID="a1"><saml:Issuer>https://idp.example</saml:Issuer><dsig:Signature xmlns:dsig="http://www.w3.org/2000/09/xmldsig#"/><saml:Subject><saml:NameID>alice</saml:NameID></saml:Subject></saml:Assertion></samlp:Response>"##;

    fn code(xml: &str) -> &'static str {
        match check(xml) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn a_plain_answer_passes_and_names_its_issuer() {
        let shape = check(OK).unwrap();
        assert_eq!(shape.issuer.as_deref(), Some("https://idp.example"));
        assert!(!shape.encrypted);
    }

    #[test]
    fn wrapping_shapes_are_refused() {
        let assertion =
            &OK[OK.find("<saml:Assertion").unwrap()..OK.find("</samlp:Response>").unwrap()];
        let second = assertion.replace("ID=\"a1\"", "ID=\"a2\"");
        let cases = [
            // A second assertion beside the first, with or without its own id.
            OK.replace("</samlp:Response>", &format!("{second}</samlp:Response>")),
            OK.replace("</samlp:Response>", &format!("{assertion}</samlp:Response>")),
            // The original moved into extensions, or inside the signature.
            OK.replace(
                assertion,
                &format!("<samlp:Extensions>{assertion}</samlp:Extensions>"),
            ),
            OK.replace(
                "<dsig:Signature xmlns:dsig=\"http://www.w3.org/2000/09/xmldsig#\"/>",
                &format!("<dsig:Signature xmlns:dsig=\"http://www.w3.org/2000/09/xmldsig#\">{}</dsig:Signature>", second),
            ),
            // A signature where none belongs, or two on one element.
            OK.replace(
                "<saml:NameID>",
                "<saml:NameID><dsig:Signature xmlns:dsig=\"http://www.w3.org/2000/09/xmldsig#\"/>",
            ),
            OK.replace(
                "<saml:Subject>",
                "<dsig:Signature xmlns:dsig=\"http://www.w3.org/2000/09/xmldsig#\"/><saml:Subject>",
            ),
            // The whole signed Response inside an evil one.
            OK.replace("<samlp:Status/>", &format!("<samlp:Status/>{}", OK.replace("ID=\"r1\"", "ID=\"r0\"").replace("ID=\"a1\"", "ID=\"a0\""))),
        ];
        for (i, xml) in cases.iter().enumerate() {
            assert_eq!(code(xml), "wrapped", "case {i}: {xml}");
        }
    }

    #[test]
    fn declarations_named_like_attributes_are_refused() {
        for xml in [
            OK.replace(
                "<saml:Subject>",
                "<saml:Subject xmlns:NotOnOrAfter=\"2099-01-01T00:00:00Z\">",
            ),
            OK.replace("<saml:NameID>", "<saml:NameID xmlns:Format=\"urn:x\">"),
            OK.replace("<saml:NameID>", "<saml:NameID xmlns:format=\"urn:x\">"),
            OK.replace(
                "<saml:Assertion ID=\"a1\">",
                "<saml:Assertion xmlns:ID=\"a0\" ID=\"a1\">",
            ),
            OK.replace(
                "<saml:Subject>",
                "<saml:Subject xmlns:Custom=\"urn:x\" Custom=\"1\">",
            ),
            OK.replace(
                "<saml:Subject>",
                "<saml:Subject Name=\"a\" x:Name=\"b\" xmlns:x=\"urn:x\">",
            ),
            OK.replace("ID=\"a1\"", "ID=\"a1\" Id=\"r1\""),
            OK.replace("<saml:Subject>", "<saml:Subject id=\"a1\">"),
            OK.replace("<saml:Subject>", "<saml:Subject id=\"&#97;1\">"),
        ] {
            assert_eq!(code(&xml), "wrapped", "{xml}");
        }
        // Ordinary declarations stay fine.
        let declared = OK.replace(
            "<saml:Subject>",
            "<saml:Subject xmlns:xs=\"http://www.w3.org/2001/XMLSchema\">",
        );
        assert_eq!(code(&declared), "ok");
    }

    #[test]
    fn character_references_and_predefined_entities_are_text() {
        let xml = OK
            .replace(">alice<", ">R&amp;D &lt;x&gt; &#13;&#x41;<")
            .replace(
                "<saml:Issuer>https://idp.example</saml:Issuer><samlp:Status/>",
                "<saml:Issuer>https://idp.example/?a=1&amp;b=2</saml:Issuer><samlp:Status/>",
            );
        let shape = check(&xml).unwrap();
        assert_eq!(
            shape.issuer.as_deref(),
            Some("https://idp.example/?a=1&b=2")
        );
        assert_eq!(code(&OK.replace(">alice<", ">&e;<")), "malformed");
        assert_eq!(code(&OK.replace(">alice<", ">ali\r\nce<")), "malformed");
        assert_eq!(code(&OK.replace(">alice<", ">ali&#13;ce<")), "ok");
        assert_eq!(code(&OK.replace("ID=\"a1\"", "ID=\"a\n1\"")), "malformed");
        assert_eq!(code(&OK.replace(">alice<", ">&#0;<")), "malformed");
    }

    #[test]
    fn a_signature_inside_an_encrypted_assertion_is_refused() {
        let xml = OK.replace("saml:Assertion", "saml:EncryptedAssertion");
        assert_eq!(code(&xml), "wrapped");
        let plain = xml.replace(
            "<dsig:Signature xmlns:dsig=\"http://www.w3.org/2000/09/xmldsig#\"/>",
            "",
        );
        assert!(check(&plain).unwrap().encrypted);
    }

    #[test]
    fn odd_documents_are_malformed() {
        for xml in [
            "<!DOCTYPE x [<!ENTITY e \"alice\">]>".to_string() + OK,
            OK.replace("samlp:Response", "samlp:ArtifactResponse"),
            OK.replace("<saml:Subject>", "<saml:Subject>&e;"),
            OK[..OK.find("<saml:Assertion").unwrap()].to_string() + "</samlp:Response>",
            "<?xml-stylesheet href=\"x\"?>".to_string() + OK,
            OK.replace("<samlp:Status/>", "<x:Status/>"),
            "not xml".into(),
        ] {
            assert_eq!(code(&xml), "malformed", "{xml}");
        }
    }
}
