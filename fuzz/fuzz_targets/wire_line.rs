//! The collector's line path over arbitrary bytes: `Event::parse_line` and
//! `validate` against the example registry must never panic, and every line
//! they accept must encode to a spool record that decodes to the same event.
#![no_main]

use std::sync::OnceLock;

use dc_config::event::{validate, Event};
use dc_config::record::{InboxSource, Record, TailPrint};
use dc_config::registry::Registry;
use libfuzzer_sys::fuzz_target;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| dc_config::examples::declared().registry)
}

fuzz_target!(|data: &[u8]| {
    let Ok(event) = Event::parse_line(data) else {
        return;
    };
    let Ok(valid) = validate(&event, registry()) else {
        return;
    };
    assert_eq!(valid.event, event.event);
    assert_eq!(valid.time_ms, event.time_ms);
    let inbox = (data.len() % 2 == 0).then_some(InboxSource {
        file: data.len() as u64,
        end_offset: u64::MAX - data.len() as u64,
        tail: TailPrint::of(data),
    });
    let record = Record { event: valid, inbox };
    let bytes = record.encode().expect("a validated event always encodes");
    assert_eq!(Record::decode(&bytes).expect("an encoded record decodes"), record);
});
