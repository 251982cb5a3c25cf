"""The tests behind each measure a DPIA names (`fedctl.dpia`), as `file::test_name`.

Kept apart so that the list is one reviewable table: a measure's claim in a DPIA is only as good as
the test that backs it, and tests/unit/fedctl/test_dpia.py checks that every test named here
exists, so a renamed or deleted test cannot leave a DPIA citing nothing.
"""

from __future__ import annotations

_G = "tests/unit/site_agent/test_gdpr.py::"
_ADV = "tests/adversarial/"
EVIDENCE: dict[str, tuple[str, ...]] = {
    "dp": (
        "tests/unit/site_agent/test_ledger.py::test_the_run_cap_refuses_and_records_nothing",
        "tests/unit/site_agent/test_ledger.py::"
        "test_the_lifetime_cap_spans_runs_and_refuses_and_records_nothing",
        "tests/e2e/test_full_run.py::test_full_run_completes_and_its_model_and_privacy_record_hold",
        "tests/e2e/test_policy.py::test_policy_refusal_is_visible_and_the_lifetime_budget_holds",
    ),
    "accountant": (
        "tests/unit/site_agent/test_train.py::test_reported_epsilon_matches_google_across_a_restart",
        "tests/unit/site_agent/test_ledger_views.py::"
        "test_a_ledger_of_another_accountant_uses_it_for_every_figure",
    ),
    "distributed": (
        _ADV + "test_distributed_trust.py::test_a_session_below_trusted_noise_sites_is_refused",
        _ADV + "test_distributed_trust.py::test_an_unmask_below_trusted_noise_sites_is_refused",
        "tests/e2e/test_distributed_mode.py::"
        "test_a_distributed_run_completes_and_every_site_reports_its_true_epsilon",
    ),
    "secagg": (
        _ADV + "test_cheating_coordinator.py::"
        "test_split_survivor_sets_under_the_plans_threshold_learns_nothing",
        _ADV + "test_cheating_coordinator.py::test_two_participant_session_is_refused",
        _ADV
        + "test_cheating_coordinator.py::test_release_masked_again_in_a_new_attempt_is_refused",
        _ADV + "test_schedules.py::test_random_adversarial_schedules_never_yield_a_release",
    ),
    "privacy_audit": (
        "tests/unit/benchmarks/test_privacy_audit.py::"
        "test_a_tiny_audit_runs_end_to_end_and_the_bound_holds",
        "tests/unit/benchmarks/test_privacy_audit.py::"
        "test_the_one_run_bound_never_exceeds_the_truth_and_finds_most_of_it",
        "tests/unit/benchmarks/test_privacy_audit.py::"
        "test_lira_separates_shifted_members_and_not_unshifted_ones",
    ),
    "pseudonymisation": (
        _G + "test_no_raw_patient_id_in_any_file_under_the_state_dir_after_a_run",
        _G + "test_pseudonymisation_moves_no_patient_between_partitions",
    ),
    "minimisation": (
        _G + "test_the_loader_keeps_no_cell_of_an_unmapped_column",
        _G + "test_check_classifies_every_column_without_printing_a_value",
        _G + "test_a_direct_identifier_mapped_as_a_feature_is_refused",
    ),
    "consent": (
        _G + "test_a_plan_for_a_purpose_the_site_does_not_allow_is_refused",
        _G + "test_a_withdrawn_consent_excludes_the_row",
        _G + "test_a_consent_column_decides_each_row",
    ),
    "erasure": (
        _G + "test_an_erased_patient_is_exactly_absent_from_the_statistics",
        _G + "test_erase_reports_past_runs_and_the_next_run_excludes_the_patient",
        _G + "test_subject_report_lists_the_processing_of_one_patient",
    ),
    "retention": (
        _G + "test_retention_purges_expired_run_state_and_keeps_the_records",
        _G + "test_records_lists_every_accepted_run",
    ),
    "access": (
        "tests/integration/federation/test_mtls.py::test_no_client_certificate_fails_the_handshake",
        "tests/integration/test_coordinator_security.py::"
        "test_a_ca_signed_certificate_not_on_the_roster_is_refused_at_hello",
        _ADV + "test_roster_attacks.py::test_a_participant_not_on_the_roster_is_refused",
        _ADV + "test_roster_attacks.py::test_an_older_or_forged_roster_is_not_taken",
        "tests/e2e/test_approval.py::test_a_pending_site_blocks_only_itself_until_approved",
    ),
    "audit": (
        "tests/unit/federation/test_audit.py::test_untampered_log_verifies",
        "tests/unit/federation/test_audit.py::test_fedctl_audit_verify_tampered_exits_1",
    ),
    "state": (
        "tests/unit/site_agent/test_sealing.py::"
        "test_a_copied_database_holds_neither_the_release_nor_the_secrets",
        "tests/unit/site_agent/test_state_modes.py::"
        "test_site_database_and_its_wal_files_are_0600_after_wal_activity",
    ),
}
"""Measure → the tests that back it (file::test); tests/unit/fedctl/test_dpia.py checks each."""
