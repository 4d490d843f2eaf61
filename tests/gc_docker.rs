//! `gptx gc` against the real engine: leftovers of dead gptx processes go, live runs stay.

mod common;

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};

#[tokio::test(flavor = "multi_thread")]
async fn gc_removes_what_dead_runs_left_and_keeps_live_ones() {
    let (docker, image) = common::docker_and_image().await;
    let dead_run = common::test_run_id("gc-dead");
    let live_run = common::test_run_id("gc-live");
    let mut dead = gptx::docker::engine::labels(&dead_run, "agent");
    dead.insert(
        gptx::docker::engine::LABEL_OWNER_PID.into(),
        "4000000".into(),
    ); // above pid_max: never alive
    let live = gptx::docker::engine::labels(&live_run, "agent");
    for (run, labels) in [(&dead_run, &dead), (&live_run, &live)] {
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(format!("gptx-{run}-agent")),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(image.clone()),
                    cmd: Some(vec!["sleep".into(), "60".into()]),
                    labels: Some(labels.clone()),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    docker
        .create_network(NetworkCreateRequest {
            name: format!("gptx-{dead_run}-world"),
            internal: Some(true),
            labels: Some(dead.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(common::leftovers(&docker, &dead_run).await, 2);

    let (removed, warnings) = gptx::docker::engine::gc(&docker, false).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(removed.networks.contains(&format!("gptx-{dead_run}-world")));
    assert_eq!(common::leftovers(&docker, &dead_run).await, 0);
    assert_eq!(
        common::leftovers(&docker, &live_run).await,
        1,
        "a live run's container was removed"
    );

    docker
        .remove_container(
            &format!("gptx-{live_run}-agent"),
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(common::leftovers(&docker, &live_run).await, 0);
}
