//! Tests that run the real balctl binary, as root, on this kernel, inside
//! network namespaces and a child cgroup each test creates (see support/).
//! The harness is libtest-mimic so this binary can also act as the tests'
//! network peer (`__peer`, see support/peer.rs).

mod backend_health;
mod bad_inputs;
mod crash;
mod crds;
mod datapath;
mod deploy;
mod devices;
mod docs;
mod dump;
mod evict;
mod explain;
mod external;
mod health;
mod health_check_node_port;
mod image;
mod input;
mod input_limits;
mod kube;
mod kube_api;
mod kube_parity;
mod kube_sync;
mod least_connections;
mod multicluster;
mod north_south;
mod output;
mod policies;
mod policy_sync;
mod progress;
mod sock_destroy;
mod state_migration;
mod stats;
mod status;
mod support;
mod sync;
mod topology;
mod trace;
mod trust;
mod watch;

use libtest_mimic::{Arguments, Trial};

fn plain_test(name: &'static str, test: fn()) -> Trial {
    Trial::test(name, move || {
        test();
        Ok(())
    })
}

fn kernel_test(name: &'static str, test: fn()) -> Trial {
    plain_test(name, test).with_ignored_flag(!support::kernel_tests_runnable())
}

/// `module::test` entries, each named after its function, that run as root
/// (reported as ignored without it).
macro_rules! kernel_tests {
    ($($module:ident :: $test:ident),* $(,)?) => {
        vec![$(kernel_test(concat!(stringify!($module), "::", stringify!($test)), $module::$test)),*]
    };
}

/// `module::test` entries that need no privileges and run everywhere.
macro_rules! plain_tests {
    ($($module:ident :: $test:ident),* $(,)?) => {
        vec![$(plain_test(concat!(stringify!($module), "::", stringify!($test)), $module::$test)),*]
    };
}

fn main() {
    support::peer::run_if_requested();
    let args = Arguments::from_args();
    if support::kernel_tests_runnable() {
        support::sweep_stale();
    }
    let mut tests = kernel_tests![
        crash::killed_syncs_keep_services_and_converge,
        crash::a_failed_repair_keeps_the_interrupted_mark,
        datapath::connects_through_vip_to_every_backend,
        datapath::unload_leaves_nothing_behind,
        datapath::reload_under_traffic_loses_nothing,
        datapath::upgrade_to_another_build_under_traffic_loses_nothing,
        datapath::an_object_built_for_other_hooks_is_refused,
        datapath::udp_and_peer_addresses_show_the_vip,
        datapath::dig_through_a_dns_vip,
        datapath::ipv6_and_v4_mapped_sockets,
        datapath::a_socket_in_use_keeps_its_way,
        datapath::a_socket_that_reads_keeps_its_way,
        datapath::one_udp_socket_keeps_a_backend_per_vip,
        datapath::affinity_sticks_until_the_backend_leaves,
        datapath::frontend_without_backends_rejects_at_once,
        backend_health::a_stopped_backend_leaves_after_fall_probes_and_returns_after_rise,
        backend_health::every_backend_down_fails_open_or_refuses_as_the_rule_says,
        backend_health::http_and_dns_checks_judge_by_the_answer,
        backend_health::a_balancing_policy_s_addresses_are_checked_by_the_kube_agent,
        backend_health::policy_add_takes_a_health_check_that_the_agent_runs,
        backend_health::an_unhealthy_backend_s_connected_sockets_are_destroyed,
        least_connections::least_connections_fills_the_least_loaded_backend,
        least_connections::weights_share_connections_in_proportion,
        multicluster::a_service_import_is_balanced_over_its_imported_slices,
        multicluster::a_global_service_has_the_endpoints_of_every_cluster,
        multicluster::two_clusters_serve_one_global_service,
        devices::load_attaches_both_tc_programs_and_reloads_them_in_place,
        devices::a_missing_device_changes_nothing,
        devices::auto_picks_the_devices_of_default_routes_and_node_addresses,
        dump::every_format_matches_the_documented_schema,
        output::kubectl_output_options_and_filters,
        output::bash_completes_policy_names,
        output::watch_logs_are_json_lines_with_time_level_target_message,
        dump::maps_larger_than_a_batch_are_read_whole,
        evict::a_full_sockets_map_counts_what_it_loses_and_status_warns,
        evict::a_big_enough_sockets_map_evicts_nothing,
        evict::closed_sockets_free_their_ways,
        input::bad_input_changes_nothing,
        input::mismatched_pinned_map_is_refused,
        input::unload_asks_on_a_terminal,
        input::privileges_are_checked_and_named,
        input::every_map_is_checked_for_room_before_any_write,
        trust::pins_another_user_could_touch_are_refused,
        trust::a_state_others_could_touch_is_refused_and_links_are_not_followed,
        trust::a_truncated_state_names_the_file,
        state_migration::a_format_3_state_is_migrated_and_programs_the_same_datapath,
        state_migration::a_format_4_state_is_migrated_and_the_next_sync_finds_local_backends,
        state_migration::a_format_5_state_is_migrated_and_programs_the_same_datapath,
        state_migration::a_format_6_state_is_migrated_and_programs_the_same_datapath,
        state_migration::a_format_7_state_is_migrated_and_programs_the_same_datapath,
        state_migration::a_format_8_state_is_migrated_and_changes_are_logged,
        state_migration::a_format_9_state_and_its_log_are_migrated_and_counted,
        state_migration::a_format_10_state_is_migrated_and_programs_the_same_datapath,
        bad_inputs::the_bad_input_corpus_changes_nothing,
        input_limits::oversized_inputs_are_refused_in_bounded_memory,
        input_limits::toml_reading_time_grows_linearly,
        input_limits::streams_marks_and_control_characters,
        input_limits::hostile_structures_are_input_errors,
        input_limits::amplifying_inputs_are_refused_in_bounded_memory,
        progress::large_plans_show_a_bar_on_a_terminal_only,
        sync::synced_frontends_reach_their_backends,
        sync::repeated_sync_changes_nothing,
        sync::sync_prunes_only_its_own_sources,
        sync::a_one_service_change_appends_one_small_record,
        sync::dry_run_changes_nothing,
        sync::bad_state_files_change_nothing,
        sync::the_example_state_file_is_valid,
        sync::churn_loses_no_connection,
        sync::a_repointed_symlink_stays_one_source,
        kube::kube_dns_answers_over_udp_and_tcp,
        kube::nodeport_answers_on_node_addresses_and_loopback,
        kube::nodeport_addresses_choose_the_node_addresses_that_serve_node_ports,
        kube::loadbalancer_answers_on_ingress_ip,
        kube::external_ip_answers,
        kube::dual_stack_keeps_families_apart,
        kube::local_traffic_policy_uses_this_nodes_endpoints,
        kube::terminating_endpoints_are_a_fallback,
        kube::named_ports_resolve_per_slice,
        kube::client_ip_affinity_sticks,
        kube::services_without_frontends_are_skipped_with_a_note,
        kube::bad_yaml_changes_nothing,
        kube::a_resynced_list_follows_a_moved_endpoint,
        external::external_frontends_follow_the_traffic_policy_and_locality,
        external::maglev_tables_are_the_same_on_every_node,
        external::source_ranges_restrict_the_load_balancer_ip_from_outside,
        north_south::cluster_policy_reaches_pods_on_both_nodes,
        north_south::local_policy_keeps_the_client_address_and_drops_without_a_local_pod,
        north_south::load_balancer_and_external_ips_reach_pods_on_both_nodes,
        north_south::node_ports_answer_only_on_the_nodeport_addresses,
        north_south::ipv6_node_port_alongside_ipv4,
        north_south::checksums_stay_right_for_packets_with_whole_checksums,
        north_south::a_smaller_mtu_beyond_node_a_lowers_the_clients_path_mtu,
        north_south::flows_keep_their_backend_across_a_backend_change,
        north_south::icmp_errors_about_a_flow_reach_the_client,
        north_south::a_client_outside_the_source_ranges_gets_nothing_from_the_load_balancer_ip,
        north_south::load_again_under_node_port_traffic_and_unload_leave_nothing_behind,
        north_south::what_a_socket_hook_translated_is_not_translated_again,
        north_south::the_snat_ports_of_ended_flows_are_given_back,
        north_south::flows_and_counters_show_north_south_translations,
        north_south::trace_shows_the_flows_packets_open_with_their_client,
        north_south::a_flow_lives_while_its_backend_sends,
        north_south::a_smaller_mtu_on_node_as_own_link_lowers_the_clients_path_mtu,
        north_south::a_smaller_mtu_on_node_as_own_link_lowers_the_clients_ipv6_path_mtu,
        north_south::a_smaller_mtu_on_node_as_link_to_the_client_lowers_the_pods_path_mtu,
        north_south::a_too_big_udp_datagram_with_df_gets_fragmentation_needed,
        north_south::a_too_big_ipv6_udp_datagram_gets_packet_too_big,
        north_south::the_external_index_holds_what_packets_from_outside_are_for,
        kube_parity::addresses_kube_proxy_ignores_are_left_alone,
        kube_parity::an_unset_serving_condition_counts_as_serving,
        kube_parity::node_ports_are_not_served_on_ipv6_loopback,
        kube_parity::a_slice_port_without_a_name_is_skipped,
        sock_destroy::a_removed_backend_s_connected_sockets_are_destroyed,
        sock_destroy::the_watch_agent_destroys_stale_sockets_within_a_second,
        sock_destroy::a_policy_change_destroys_its_removed_backend_s_udp_sockets,
        sock_destroy::the_kube_agent_destroys_a_deleted_coredns_pod_s_sockets,
        watch::changes_reach_the_datapath_within_a_second,
        watch::a_directory_is_followed_from_a_broken_start,
        watch::a_watcher_starts_from_changes_others_made_meanwhile,
        watch::an_in_place_rewrite_removes_nothing,
        watch::a_slow_in_place_rewrite_removes_nothing,
        watch::a_list_cut_at_an_item_boundary_is_held,
        watch::an_empty_input_is_refused_by_a_one_shot_sync,
        watch::a_note_is_said_once,
        explain::explain_agrees_with_real_connects,
        explain::a_policy_layer_wins_over_the_service_and_says_why,
        explain::failures_and_untranslated_destinations,
        explain::the_client_can_be_a_pod_found_through_the_api_server,
        explain::an_unconnected_udp_sockets_choice_is_shown_beside_the_connect,
        trace::events_name_the_client_and_what_it_got,
        trace::tracers_run_side_by_side_and_filter,
        trace::a_killed_tracer_stops_events_within_two_seconds,
        trace::trace_ends_on_duration_and_sigint,
        stats::counters_match_connections_and_metrics,
        health::a_stalled_client_and_idle_connections_delay_no_request,
        health::probes_and_agent_metrics_follow_the_syncs,
        health::healthz_turns_503_while_the_api_server_is_away,
        health_check_node_port::health_check_node_ports_follow_the_services,
        health_check_node_port::a_file_watch_serves_health_check_node_ports,
        health_check_node_port::a_toml_file_serves_health_check_node_ports,
        status::exit_codes_tell_not_loaded_in_sync_and_drift,
        status::status_and_load_follow_missing_and_defunct_links,
        policies::redirect_then_balancing_then_service,
        policies::a_rate_limited_redirect_sends_the_rest_to_the_service,
        policies::a_failed_change_leaves_the_rate_limits_as_they_were,
        policies::a_batch_the_kernel_stops_half_way_is_undone,
        policies::a_failed_load_leaves_the_maps_and_the_mark_as_they_were,
        policies::rate_limits_that_do_not_fit_change_nothing,
        policy_sync::node_local_dns_falls_back_to_the_service,
        policy_sync::a_redirect_over_its_rate_limit_falls_back_to_the_service,
        policy_sync::balancing_policies_reach_addresses_and_host_ports,
        policy_sync::bad_policies_change_nothing,
        kube_sync::a_one_shot_kube_sync_applies_the_cluster_and_exits,
        kube_sync::a_kube_watch_follows_the_cluster,
        kube_sync::trace_names_the_pod_of_a_container,
        kube_sync::a_kube_watch_watches_only_the_pods_policies_select,
        kube_sync::a_kube_watch_restarted_after_a_thousand_changes_reads_back_what_it_applied,
        topology::zone_and_node_hints_choose_the_endpoints,
        topology::a_zone_change_moves_new_connections_and_keeps_established_ones,
        image::both_platforms_hold_a_static_balctl_of_this_version,
        image::containerd_imports_both_archives_and_runs_the_image,
        image::the_daemonset_runs_in_podman_and_a_new_pod_takes_over,
        image::the_uninstall_manifest_leaves_nothing_behind,
    ];
    tests.extend(plain_tests![
        docs::completions_and_man_pages_are_fresh,
        crds::the_crds_accept_the_examples_and_refuse_bad_policies,
        deploy::the_manifests_are_valid_kubernetes_objects,
        kube_api::the_client_lists_and_gets_every_kind,
        kube_api::a_reflector_follows_adds_changes_and_deletes,
        kube_api::the_watcher_recovers_from_drops_expiry_and_outages,
        kube_api::a_streaming_list_with_a_field_selector_follows_pods_onto_and_off_the_node,
    ]);
    libtest_mimic::run(&args, tests).exit();
}
