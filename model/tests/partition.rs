//! S3 partitioning lands each key where Bacalhau puts it: `tests/partition/expected.json` holds,
//! per rule and partition count, the partition of each key as `gen.py` computes it from Bacalhau's
//! `pkg/s3/partitioning.go` (FNV-1a and the rules written out independently of this crate).

use caravel_model::partition::PartitionConfig;

#[test]
fn every_key_lands_in_the_partition_bacalhau_gives_it() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/partition/expected.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 18);
    let mut checked = 0;
    for case in &cases {
        let rule: PartitionConfig = serde_json::from_value(case["Partition"].clone()).unwrap();
        rule.validate().unwrap();
        let count = case["Count"].as_u64().unwrap() as usize;
        let prefix = case["Key"].as_str().unwrap();
        let mut seen = vec![0; count];
        for (key, want) in case["Expected"].as_object().unwrap() {
            let want = want.as_u64().unwrap() as usize;
            assert_eq!(
                rule.partition_of(key, prefix, count),
                want,
                "{key} under {rule:?} with {count} partitions"
            );
            // Exactly one execution keeps it.
            let keepers: Vec<usize> = (0..count)
                .filter(|i| rule.keeps(key, prefix, *i, count))
                .collect();
            assert_eq!(keepers, vec![want], "{key}");
            seen[want] += 1;
            checked += 1;
        }
        assert_eq!(
            seen.iter().sum::<usize>(),
            case["Expected"].as_object().unwrap().len()
        );
    }
    assert!(checked > 200);
}

#[test]
fn without_a_rule_or_with_one_partition_every_execution_reads_everything() {
    let none = PartitionConfig {
        kind: "none".into(),
        ..Default::default()
    };
    let object = PartitionConfig {
        kind: "object".into(),
        ..Default::default()
    };
    for i in 0..3 {
        assert!(none.keeps("p/a.csv", "p/", i, 3));
    }
    assert!(object.keeps("p/a.csv", "p/", 0, 1));
    assert!(
        object.keeps("p/dir/", "p/", 2, 3),
        "directory markers are not partitioned out"
    );
}

#[test]
fn bad_rules_are_refused_with_bacalhau_s_reasons() {
    for (rule, want) in [
        (r#"{"Type":"regex"}"#, "regex pattern cannot be empty"),
        (r#"{"Type":"regex","Pattern":"("}"#, "invalid regex pattern"),
        (
            r#"{"Type":"substring","StartIndex":3,"EndIndex":3}"#,
            "end index must be greater",
        ),
        (r#"{"Type":"date"}"#, "date format cannot be empty"),
        (
            r#"{"Type":"date","DateFormat":"yyyy"}"#,
            "invalid date format",
        ),
        (r#"{"Type":"hash"}"#, "unsupported partition key type hash"),
    ] {
        let r: PartitionConfig = serde_json::from_str(rule).unwrap();
        let e = r.validate().unwrap_err();
        assert!(e.contains(want), "{rule}: {e}");
    }
}
