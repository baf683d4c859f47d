//! The query service's statement check (`POST /v1/sql`) over arbitrary
//! text: it must never panic, and what it lets through must pass it again
//! unchanged (comments already gone, nothing left that it would refuse).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(statement) = query::sql::check(text) {
        let again = query::sql::check(&statement).expect("a checked statement passes again");
        assert_eq!(again, statement.trim_end());
    }
});
