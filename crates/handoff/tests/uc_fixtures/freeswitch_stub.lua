-- A stand-in for FreeSWITCH's mod_lua, for crates/handoff/tests/uc_recipes.rs: just enough
-- of the `freeswitch` and `session` objects to run examples/freeswitch/handoff.lua outside
-- FreeSWITCH. It is not FreeSWITCH: it checks the script's own logic (its HTTP exchanges
-- with a real handoff, its JSON handling, the bridge string it builds), not mod_lua/sofia.
--
-- Usage: lua stub.lua SCRIPT QUEUE TOPIC_DIGIT ACCOUNT_DIGITS SIP_CALL_ID
-- Prints one line per thing the script did to the call: "bridge <data>", "hangup <cause>",
-- "log <level> <message>", "playback <file>", and "end" when the script returned.

local script, queue, topic, account, call_id = arg[1], arg[2], arg[3], arg[4], arg[5]

local function say(...)
  io.stdout:write(table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

local variables = {
  caller_id_number = "+15551234567",
  destination_number = "18005550100",
  sip_call_id = call_id,
}
local digits = { topic, account }
local up = true
local hangup_hook = nil

freeswitch = {
  consoleLog = function(level, message)
    say("log", level, (message:gsub("\n$", "")))
  end,
}

session = {
  answer = function(self) end,
  ready = function(self)
    return up
  end,
  get_uuid = function(self)
    return "4f2c6a7e-0000-4000-8000-000000000001"
  end,
  getVariable = function(self, name)
    return variables[name]
  end,
  setVariable = function(self, name, value)
    variables[name] = value
  end,
  setHangupHook = function(self, name)
    hangup_hook = name
  end,
  playAndGetDigits = function(self, min, max, tries, timeout, terminators, prompt, error_file, regex)
    return table.remove(digits, 1) or ""
  end,
  execute = function(self, application, data)
    if application == "bridge" then
      say("bridge", data)
      -- The agent answered, talked, and hung up: with hangup_after_bridge, the caller's
      -- leg ends too, and FreeSWITCH runs the hangup hook.
      up = false
      if hangup_hook then
        _G[hangup_hook](self, "hangup")
      end
    else
      say(application, data)
    end
  end,
  hangup = function(self, cause)
    say("hangup", cause)
    up = false
  end,
}

argv = { [0] = script, queue }
local chunk = assert(loadfile(script))
chunk()
say("end")
