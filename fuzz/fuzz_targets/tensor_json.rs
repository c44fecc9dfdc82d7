//! Tensor JSON arrives in API request bodies and CLI input files.
#![no_main]
use fab_inference::Tensor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tensor::from_json_bytes(data, 1 << 20) {
        let again = serde_json::to_vec(&t.to_json_value()).expect("serialises");
        let back = Tensor::from_json_bytes(&again, 1 << 22).expect("own output parses");
        assert_eq!(back.digest(), t.digest());
    }
});
