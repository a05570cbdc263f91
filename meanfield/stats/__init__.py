"""What is measured and what theory predicts for it: one definition of every statistic, used by
simulations and by real-model dumps alike (``diagnostics``), the closed forms (``theory``), the
paper's tables (``paper``) and independent reference solutions for verification (``reference``)."""
