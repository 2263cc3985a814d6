"""Exit codes of the BIDS execution specification (and sysexits.h, which it borrows)."""

EX_OK = 0
EX_FAILURE = 1  # processing failed for at least one participant, or a stage is unavailable
EX_VALIDATION = 16  # bids_dir failed the BIDS validator
EX_NO_PARTICIPANTS = 18  # the filters select no participant
EX_USAGE = 64  # command-line usage error (incl. output_dir inside bids_dir)
EX_DATAERR = 65  # group level: an arm of the contrast has too few participants
EX_NOINPUT = 66  # bids_dir missing
EX_CANTCREAT = 73  # output_dir cannot be created
