//! Preset names: `WxAy` and the per-group weight presets `WxAy-gG`.

use dmq_calib::QuantConfig;

#[test]
fn grouped_presets_parse_and_bad_ones_are_refused() {
    let c = QuantConfig::preset("W4A16-g128").unwrap();
    assert_eq!(c.weight.and_then(|w| w.int_bits()), Some(4));
    assert!(c.act.is_none(), "A16 keeps activations in FP");
    assert_eq!(c.weight_group, Some(128));
    assert_eq!(c.name, "W4A16-g128");
    let c = QuantConfig::preset("w4a8-G64").unwrap();
    assert_eq!(c.act.and_then(|a| a.int_bits()), Some(8));
    assert_eq!(c.weight_group, Some(64));
    assert_eq!(QuantConfig::preset("W4A4").unwrap().weight_group, None);
    for bad in [
        "W4A8-g0",
        "W4A8-g",
        "W4A8-gx",
        "fp-g64",
        "W32A8-g64",
        "W4A8-g99999999",
    ] {
        assert!(QuantConfig::preset(bad).is_err(), "{bad} accepted");
    }
    // the group survives a JSON round trip (config files), and old files without it load
    let c = QuantConfig::preset("W4A4-g64").unwrap();
    let back: QuantConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    let mut v = serde_json::to_value(QuantConfig::preset("W8A8").unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("weight_group");
    let old: QuantConfig = serde_json::from_value(v).unwrap();
    assert_eq!(old.weight_group, None);
}
