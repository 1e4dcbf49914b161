"""offrl: offline RL datasets, fast baselines, sound statistics and a verifying leaderboard."""

__version__ = "0.1.0"
