//! Parses arbitrary UTF-8 as a policy; when it is valid, evaluates a few calls against it.
//! Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{Call, Policy};

fuzz_target!(|text: &str| {
    let Ok(policy) = Policy::parse(text) else {
        return;
    };
    let arguments = serde_json::json!({"amount": 600, "reason": "x", "items": [{"price": 1.5}]});
    for tool in ["", "a", "create_refund", "admin_users"] {
        for changed in [false, true] {
            let call = Call { tool, arguments: &arguments, changed };
            let _ = policy.evaluate(&call).agent_text();
            let _ = policy.is_hidden(tool, changed);
        }
    }
});
