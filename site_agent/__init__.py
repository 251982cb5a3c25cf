"""The hospital side: agent loop, local data, DP-SGD trainer, site policy, privacy ledger."""
