//! What the property tests share: their configuration and the hostile inputs they feed.
//!
//! Every property runs [`config`]'s cases (256; `PROPTEST_CASES=100000 cargo test --lib properties` for a
//! deeper run) and writes no persistence files: a failure prints its minimal input, which is then kept as an
//! ordinary unit test next to the code it found wrong.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// The default cases (or `PROPTEST_CASES`), and no `proptest-regressions/` files.
pub(crate) fn config() -> Config {
    Config { failure_persistence: None, ..Config::default() }
}

/// Characters that parsers of comma-separated lists, names, numbers and durations trip on.
const TRICKY: &[char] = &[
    ',',
    ',',
    ',',
    '.',
    '.',
    '-',
    '*',
    ' ',
    '\t',
    '\n',
    '\r',
    '\0',
    '\u{7f}',
    ':',
    '[',
    ']',
    '/',
    '_',
    '+',
    'e',
    'E',
    'µ',
    'h',
    'm',
    's',
    'n',
    'u',
    'A',
    'Z',
    'a',
    'z',
    '0',
    '1',
    '5',
    '9',
    'é',
    'ß',
    'İ',
    'K',
    '\u{200b}',
    '\u{feff}',
    '\u{202e}',
    '😀',
    '\u{10ffff}',
];

/// Text a tenant or a CA might send: arbitrary Unicode, dense mixes of separators, digits, units and
/// look-alike letters (the Kelvin sign lowercases to `k`), and long repetitions (tens of kilobytes, as a
/// 256 KiB annotation could be).
pub(crate) fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(any::<char>(), 0..80).prop_map(String::from_iter),
        4 => proptest::collection::vec(proptest::sample::select(TRICKY), 0..200).prop_map(String::from_iter),
        1 => (proptest::collection::vec(proptest::sample::select(TRICKY), 1..12), 1..8_000usize)
            .prop_map(|(unit, times)| String::from_iter(unit).repeat(times)),
    ]
}
