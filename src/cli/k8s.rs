//! `gptx k8s manifest`: a plan as a Kubernetes Indexed Job, written to stdout or a file.

use super::*;
use crate::plan::k8s::Options;
use crate::plan::Plan;

/// Reads the plan and its bytes, writes the manifest, and says how to apply it.
pub(super) fn manifest(a: K8sManifestArgs) -> Result<i32, Exit> {
    let plan = Plan::load(&a.plan).map_err(usage)?;
    // The bytes the pods get: the file as it is (it was just checked; the manifest checks the
    // text is the same plan).
    let text = std::fs::read_to_string(&a.plan)
        .with_context(|| a.plan.display().to_string())
        .map_err(usage)?;
    let opts = Options {
        image: a.image.clone(),
        parallelism: a.parallelism,
        backoff_limit_per_index: a.backoff_limit_per_index,
        claim: a.claim.clone(),
        existing_claim: a.existing_claim,
        claim_size: a.claim_size.clone(),
        namespace: a.namespace.clone(),
    };
    let yaml = crate::plan::k8s::manifest(&plan, &text, &opts).map_err(usage)?;
    let runs = crate::plan::k8s::pod_runs_dir(&plan).map_err(usage)?;
    let apply = match &a.out {
        Some(path) => {
            std::fs::write(path, &yaml)
                .with_context(|| format!("--out {}", path.display()))
                .map_err(failed)?;
            format!("kubectl apply -f {}", path.display())
        }
        None => {
            out_text(&yaml);
            "kubectl apply -f FILE (or pipe it into kubectl apply -f -)".to_string()
        }
    };
    eprintln!(
        "gptx k8s manifest: plan {} · {} items as Job gptx-{} in namespace {} ({} pods at once, {} retries per item) · runs on claim {}{} at {}",
        plan.plan_id,
        plan.items.len(),
        plan.plan_id,
        a.namespace,
        a.parallelism,
        a.backoff_limit_per_index,
        a.claim,
        if a.existing_claim { " (existing)" } else { "" },
        runs.display()
    );
    eprintln!(
        "the manifest was written, not run on a cluster here · apply it with: {apply} (Kubernetes >= 1.29; the namespace must exist and admit privileged pods; the image must hold gptx {} and the plan's suite and recipes) · follow it with: kubectl -n {} get job gptx-{}",
        plan.gptx_version, a.namespace, plan.plan_id
    );
    // Client-side apply keeps a copy of each object in an annotation, and annotations hold 256 KiB.
    if text.len() > 200_000 {
        eprintln!(
            "the plan is {} bytes: apply with `kubectl apply --server-side`, or kubectl's copy of the ConfigMap will not fit its annotation",
            text.len()
        );
    }
    if !a.existing_claim {
        eprintln!(
            "the claim {} asks for ReadWriteMany storage of {}: the cluster's default storage class must provide it (or make the claim yourself and pass --existing-claim)",
            a.claim, a.claim_size
        );
    }
    Ok(exit::OK)
}
