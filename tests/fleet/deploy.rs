//! deploy/*.yaml stays true to the fleet example: each manifest's container arguments are run
//! through the example (they must parse, and get as far as connecting to Redis), its probes are
//! the paths the example serves on the port its `--http` names, and the pod's termination grace
//! is above `--grace-ms`.

use std::path::Path;
use std::process::Command;

use crate::harness::{example, TOKEN};

/// The items of the block list under `key:` (one `- "value"` per line), in order.
fn list_under(yaml: &str, key: &str) -> Vec<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}:"));
    let Some(head) = lines.next() else {
        return Vec::new();
    };
    let indent = head.len() - head.trim_start().len();
    lines
        .take_while(|l| {
            let t = l.trim_start();
            t.starts_with("- ") && l.len() - t.len() >= indent
        })
        .map(|l| l.trim_start()[2..].trim().trim_matches('"').to_owned())
        .collect()
}

/// Every `key: value` in the text, values unquoted.
fn values_of(yaml: &str, key: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .collect()
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .map(|i| args[i + 1].as_str())
}

#[test]
fn manifests_use_the_flags_probes_and_grace_of_the_fleet_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name.starts_with("secret") {
            continue;
        }
        let yaml = std::fs::read_to_string(&path).unwrap();
        let args = list_under(&yaml, "args");
        assert_eq!(args.first().map(String::as_str), Some("gateway"), "{name}");

        // Kubernetes expands $(REDIS_URL) from the container's env: a Redis nothing listens on
        // here, so a run that parsed every flag ends at connecting.
        let run: Vec<String> = args
            .iter()
            .map(|a| a.replace("$(REDIS_URL)", "redis://127.0.0.1:1/"))
            .map(|a| a.replace("0.0.0.0:9100", "127.0.0.1:0"))
            .collect();
        let output = Command::new(example("fleet"))
            .args(&run)
            .env("DISCORD_TOKEN", TOKEN)
            // A StatefulSet's pod name, for --range-per-ordinal.
            .env("HOSTNAME", "shardline-pinned-3")
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("cannot reach Redis at redis://127.0.0.1:1/"),
            "{name}: flags accepted, then Redis was the only problem: {stderr}"
        );

        let http = flag(&args, "--http").expect("--http");
        let port = http.rsplit_once(':').unwrap().1;
        assert_eq!(values_of(&yaml, "path"), ["/healthz", "/readyz"], "{name}");
        assert!(
            values_of(&yaml, "port")
                .iter()
                .chain(&values_of(&yaml, "containerPort"))
                .all(|p| p == port),
            "{name}: every port is --http's {port}"
        );
        let grace_ms: u64 = flag(&args, "--grace-ms").unwrap().parse().unwrap();
        let termination: Vec<u64> = values_of(&yaml, "terminationGracePeriodSeconds")
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(termination.len(), 1, "{name}");
        assert!(
            termination[0] * 1000 > grace_ms,
            "{name}: SIGKILL after the grace"
        );
        if let Some(per) = flag(&args, "--range-per-ordinal") {
            let shards: u32 = flag(&args, "--shards").unwrap().parse().unwrap();
            let per: u32 = per.parse().unwrap();
            let replicas: u32 = values_of(&yaml, "replicas")[0].parse().unwrap();
            assert!(replicas * per >= shards, "{name}: every shard has a pod");
        }
        checked += 1;
    }
    assert_eq!(checked, 2, "the Deployment and the StatefulSet");
}

/// `--range-per-ordinal` refuses a pod whose ordinal is past the shards, before touching Redis.
#[test]
fn a_pod_past_the_shards_is_refused() {
    let output = Command::new(example("fleet"))
        .args([
            "gateway",
            "--redis",
            "redis://127.0.0.1:1/",
            "--shards",
            "16",
            "--range-per-ordinal",
            "4",
        ])
        .env("DISCORD_TOKEN", TOKEN)
        .env("HOSTNAME", "shardline-pinned-4")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pod 4 with 4 shards each is past the 16 shards"),
        "{stderr}"
    );
}
