//! The byte deltas history is stored as (`store::delta`): every delta rebuilds exactly the text it
//! was made for, a small edit makes a small delta, and a delta that does not fit its base is an
//! error, never a wrong text.

use hoard::store::delta::{DeltaError, apply, encode, target_len};
use proptest::prelude::*;

/// A pair of related texts: `base` and `base` with a few random splices.
fn edited_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        prop::collection::vec(prop::sample::select(b"{}[]\":,abcdefghij0123456789 x".to_vec()), 0..3_000),
        prop::collection::vec(
            (any::<prop::sample::Index>(), 0usize..40, prop::collection::vec(any::<u8>(), 0..40)),
            0..6,
        ),
    )
        .prop_map(|(base, splices)| {
            let mut target = base.clone();
            for (at, removed, inserted) in splices {
                let start = if target.is_empty() { 0 } else { at.index(target.len()) };
                let end = (start + removed).min(target.len());
                target.splice(start..end, inserted);
            }
            (target, base)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_delta_rebuilds_its_target_from_an_unrelated_base(
        target in prop::collection::vec(any::<u8>(), 0..2_000),
        base in prop::collection::vec(any::<u8>(), 0..2_000),
    ) {
        let delta = encode(&target, &base);
        prop_assert_eq!(apply(&delta, &base).expect("applies"), target.clone());
        prop_assert_eq!(target_len(&delta).expect("header"), target.len() as u64);
    }

    #[test]
    fn a_delta_rebuilds_its_target_from_an_edited_base((target, base) in edited_pair()) {
        let delta = encode(&target, &base);
        prop_assert_eq!(apply(&delta, &base).expect("applies"), target);
    }

    #[test]
    fn a_delta_applied_to_another_base_is_refused((target, base) in edited_pair(), flip in any::<prop::sample::Index>()) {
        prop_assume!(!base.is_empty());
        let delta = encode(&target, &base);
        let mut other = base.clone();
        let at = flip.index(other.len());
        other[at] ^= 0x5A;
        // Either the changed byte is not copied (the rebuild is still right) or it is refused.
        match apply(&delta, &other) {
            Ok(rebuilt) => prop_assert_eq!(rebuilt, target),
            Err(error) => prop_assert_eq!(error, DeltaError::ChecksumMismatch),
        }
    }

    #[test]
    fn a_truncated_delta_is_refused((target, base) in edited_pair(), cut in any::<prop::sample::Index>()) {
        let delta = encode(&target, &base);
        let keep = cut.index(delta.len());
        prop_assert!(apply(&delta[..keep], &base).is_err(), "a delta cut at {} of {} bytes applied", keep, delta.len());
    }
}

#[test]
fn a_few_changed_fields_of_an_8_kib_profile_make_a_delta_of_a_few_dozen_bytes() {
    let items: Vec<String> =
        (0..40).map(|n| format!(r#""item-{n:03}":{{"kind":"sword","level":{},"durability":97}}"#, n % 10)).collect();
    let base = format!(
        r#"{{"coins":1000,"gems":250,"level":42,"items":{{{}}},"journal":"{}"}}"#,
        items.join(","),
        "y".repeat(5_000)
    );
    let target = base.replacen(r#""coins":1000"#, r#""coins":995"#, 1).replacen(r#""level":7"#, r#""level":8"#, 1);
    assert_ne!(target, base);
    let delta = encode(target.as_bytes(), base.as_bytes());
    assert_eq!(apply(&delta, base.as_bytes()).expect("applies"), target.as_bytes());
    assert!(delta.len() < 80, "a two-field edit of {} bytes made a delta of {} bytes", base.len(), delta.len());
}

#[test]
fn a_delta_of_another_format_or_a_wrong_base_length_is_refused() {
    let delta = encode(b"hello world", b"hello there");
    let mut future = delta.clone();
    future[0] = 9;
    assert_eq!(apply(&future, b"hello there"), Err(DeltaError::UnknownFormat(9)));
    assert_eq!(apply(&delta, b"hello"), Err(DeltaError::WrongBase { expected: 11, found: 5 }));
    assert!(apply(&[], b"").is_err());
}
