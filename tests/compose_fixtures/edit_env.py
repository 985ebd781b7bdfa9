"""TEST FIXTURE: the compose test's "$EDITOR .env": sets the values of a JSON file of
settings in the .env that `cp .env.example .env` made, as a person sets the secrets.
Usage: python edit_env.py SETTINGS.json .env"""

import json
import sys
from pathlib import Path

settings = json.loads(Path(sys.argv[1]).read_text())
env_file = Path(sys.argv[2])
lines = env_file.read_text().splitlines()
keys = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}
missing = set(settings) - keys
assert not missing, f".env.example has no {sorted(missing)}"
edited = [f"{line.split('=', 1)[0]}={settings[line.split('=', 1)[0]]}"
          if "=" in line and not line.startswith("#") and line.split("=", 1)[0] in settings else line
          for line in lines]
env_file.write_text("\n".join(edited) + "\n")
