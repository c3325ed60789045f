//! Any bytes a client may send as a flow definition: parsed as JSON, then
//! validated. Validation must never panic, and what it accepts must survive
//! a round trip through its typed form unchanged in verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(def) = floq_shared::flow::validate(&raw) {
        let again = serde_json::to_value(&def).expect("a valid definition serializes");
        assert!(
            floq_shared::flow::validate(&again).is_ok(),
            "a definition valid once is valid again after a round trip: {raw}"
        );
    }
});
