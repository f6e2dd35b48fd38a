-- handoff + FreeSWITCH 1.10 (mod_lua): an IVR that hands the caller off to a human agent.
--
-- Install as /usr/share/freeswitch/scripts/handoff.lua (the "script-directory" of
-- lua.conf.xml) and route the contact-centre number to it, e.g. in dialplan/public.xml:
--
--   <extension name="contact-centre">
--     <condition field="destination_number" expression="^(18005550100|support)$">
--       <action application="lua" data="handoff.lua support"/>
--     </condition>
--   </extension>
--
-- The argument is the handoff queue. The script answers, collects a topic and an account
-- number, posts the hand-off to handoff (POST /v1/interactions), and bridges the caller to
-- the agent handoff picked with the interaction id in an X-Handoff-Interaction header
-- ({sip_h_X-Handoff-Interaction=...} on the B leg). While handoff has the call queued the
-- caller hears music and the script long-polls handoff; when the agent's phone does not
-- answer, it waits for handoff's offer to the next agent. Whoever hangs up, handoff is told
-- (POST /v1/interactions/{id}/hangup).
--
-- Settings, from channel variables (set them in vars.xml or the dialplan) or else the
-- process environment: handoff_url / HANDOFF_URL, handoff_token / HANDOFF_TOKEN (an ivr key),
-- handoff_gateway (the sofia dial string prefix for agents' SIP URIs, default
-- "sofia/external/"), handoff_moh (default "local_stream://moh").
--
-- HTTP: the system's curl(1), through io.popen. (mod_curl's `curl` API splits its
-- arguments on spaces, which an "Authorization: Bearer ..." header contains.) JSON: a small
-- decoder below, so the script needs no Lua library beyond what mod_lua ships.

local queue = argv[1] or "support"

-- ---- settings ----------------------------------------------------------------------

local function setting(variable, environment, default)
  local value = session:getVariable(variable)
  if value == nil or value == "" then
    value = os.getenv(environment)
  end
  if value == nil or value == "" then
    value = default
  end
  return value
end

local handoff_url = (setting("handoff_url", "HANDOFF_URL", "") or ""):gsub("/+$", "")
local handoff_token = setting("handoff_token", "HANDOFF_TOKEN", "")
local gateway = setting("handoff_gateway", "HANDOFF_GATEWAY", "sofia/external/")
local moh = setting("handoff_moh", "HANDOFF_MOH", "local_stream://moh")

local function log(level, message)
  freeswitch.consoleLog(level, "handoff: " .. message .. "\n")
end

-- ---- JSON --------------------------------------------------------------------------

local json = {}

-- A string as a JSON string literal.
function json.quote(text)
  local escaped = tostring(text):gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
    return named[c] or string.format("\\u%04x", c:byte())
  end)
  return '"' .. escaped .. '"'
end

-- An object of strings (nested tables of strings allowed), in key order for stable bodies.
function json.encode(value)
  if type(value) ~= "table" then
    if value == nil then
      return "null"
    end
    return json.quote(value)
  end
  local keys = {}
  for key in pairs(value) do
    keys[#keys + 1] = key
  end
  table.sort(keys)
  local parts = {}
  for _, key in ipairs(keys) do
    parts[#parts + 1] = json.quote(key) .. ":" .. json.encode(value[key])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function utf8_char(code)
  if code < 0x80 then
    return string.char(code)
  elseif code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  end
  return string.char(
    0xE0 + math.floor(code / 0x1000),
    0x80 + math.floor(code / 0x40) % 0x40,
    0x80 + code % 0x40
  )
end

-- Decodes JSON text; JSON null becomes json.null. Errors on malformed input.
json.null = setmetatable({}, { __tostring = function() return "null" end })

function json.decode(text)
  local position = 1
  local value

  local function skip()
    position = text:find("[^ \t\r\n]", position) or #text + 1
  end

  local function fail(what)
    error("JSON: " .. what .. " at " .. position, 0)
  end

  local function string_literal()
    local parts = {}
    position = position + 1
    while true do
      local c = text:sub(position, position)
      if c == "" then
        fail("unterminated string")
      elseif c == '"' then
        position = position + 1
        return table.concat(parts)
      elseif c == "\\" then
        local e = text:sub(position + 1, position + 1)
        local simple = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
        if simple[e] then
          parts[#parts + 1] = simple[e]
          position = position + 2
        elseif e == "u" then
          local code = tonumber(text:sub(position + 2, position + 5), 16) or fail("bad \\u escape")
          parts[#parts + 1] = utf8_char(code)
          position = position + 6
        else
          fail("bad escape")
        end
      else
        local stop = text:find('["\\]', position) or #text + 1
        parts[#parts + 1] = text:sub(position, stop - 1)
        position = stop
      end
    end
  end

  function value()
    skip()
    local c = text:sub(position, position)
    if c == "{" then
      local object = {}
      position = position + 1
      skip()
      if text:sub(position, position) == "}" then
        position = position + 1
        return object
      end
      while true do
        skip()
        if text:sub(position, position) ~= '"' then
          fail("expected a key")
        end
        local key = string_literal()
        skip()
        if text:sub(position, position) ~= ":" then
          fail("expected ':'")
        end
        position = position + 1
        object[key] = value()
        skip()
        local separator = text:sub(position, position)
        position = position + 1
        if separator == "}" then
          return object
        elseif separator ~= "," then
          fail("expected ',' or '}'")
        end
      end
    elseif c == "[" then
      local array = {}
      position = position + 1
      skip()
      if text:sub(position, position) == "]" then
        position = position + 1
        return array
      end
      while true do
        array[#array + 1] = value()
        skip()
        local separator = text:sub(position, position)
        position = position + 1
        if separator == "]" then
          return array
        elseif separator ~= "," then
          fail("expected ',' or ']'")
        end
      end
    elseif c == '"' then
      return string_literal()
    elseif text:find("^true", position) then
      position = position + 4
      return true
    elseif text:find("^false", position) then
      position = position + 5
      return false
    elseif text:find("^null", position) then
      position = position + 4
      return json.null
    else
      local number = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", position)
      if not number or number == "" then
        fail("unexpected '" .. c .. "'")
      end
      position = position + #number
      return tonumber(number)
    end
  end

  local result = value()
  skip()
  if position <= #text then
    fail("trailing text")
  end
  return result
end

-- ---- handoff -----------------------------------------------------------------------

-- A word for a POSIX shell, whatever it contains.
local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

-- Returns the HTTP status (0 when handoff could not be reached) and the decoded body.
local function handoff(method, path, body, timeout_s, idempotency_key)
  local command = {
    "curl", "--silent", "--show-error", "--max-time", tostring(timeout_s or 5),
    "--request", method,
    "--header", shell_quote("Authorization: Bearer " .. handoff_token),
    "--write-out", shell_quote("\n%{http_code}"),
  }
  if body then
    command[#command + 1] = "--header"
    command[#command + 1] = shell_quote("Content-Type: application/json")
    command[#command + 1] = "--data-binary"
    command[#command + 1] = shell_quote(json.encode(body))
  end
  if idempotency_key then
    command[#command + 1] = "--header"
    command[#command + 1] = shell_quote("Idempotency-Key: " .. idempotency_key)
  end
  command[#command + 1] = shell_quote(handoff_url .. path)
  local pipe = io.popen(table.concat(command, " ") .. " 2>/dev/null")
  local output = pipe:read("*a")
  pipe:close()
  local text, status = output:match("^(.*)\n(%d%d%d)$")
  if not status or status == "000" then
    return 0, nil
  end
  local ok, decoded = pcall(json.decode, text)
  return tonumber(status), ok and decoded or nil
end

-- ---- the call ----------------------------------------------------------------------

local interaction = nil

-- Whoever hangs up, handoff learns the caller is gone (abandoned before an accept,
-- wrap_up after). Runs once, from the hangup hook or at the end of the script.
local reported = false
local function report_hangup()
  if reported or not interaction then
    return
  end
  reported = true
  local status = handoff("POST", "/v1/interactions/" .. interaction.id .. "/hangup")
  -- 409: it had ended already (the agent completed it).
  if status ~= 200 and status ~= 409 then
    log("WARNING", "hangup of " .. interaction.id .. " answered " .. status)
  end
end

function on_hangup(s, status)
  report_hangup()
  return "exit"
end

local function sorry(why)
  log("WARNING", why)
  if session:ready() then
    -- A core tone (no sound files needed): three short beeps, then hang up.
    session:execute("playback", "tone_stream://L=3;%(200,200,480)")
    session:hangup("NORMAL_TEMPORARY_FAILURE")
  end
end

-- Polls handoff (GET /v1/interactions/{id}) while `still(interaction)` holds, the caller
-- hearing music in slices of 10 s between polls. Returns the interaction as it then is, or
-- nil when handoff could not be asked.
local function hold_while(still)
  local path = "/v1/interactions/" .. interaction.id
  local status, answer = handoff("GET", path, nil, 5)
  while status == 200 and type(answer) == "table" and still(answer) and session:ready() do
    session:setVariable("playback_timeout_sec", "10")
    session:execute("playback", moh)
    status, answer = handoff("GET", path, nil, 5)
  end
  if status ~= 200 or type(answer) ~= "table" then
    return nil
  end
  return answer
end

session:answer()
session:setHangupHook("on_hangup")

-- The IVR part: a topic, then the account number. Tones as prompts so the script runs
-- without sound files; record your own ("For billing press 1...").
local beep = "tone_stream://%(300,0,800)"
local silence = "silence_stream://250"
local topic = session:playAndGetDigits(1, 1, 2, 5000, "#", beep, silence, "^[12]$")
local account = session:playAndGetDigits(1, 10, 2, 8000, "#", beep, silence, "^[0-9]+$")
local context = { intent = (topic == "1") and "billing" or "support" }
if account ~= "" then
  context.account = account
end

if handoff_url == "" or handoff_token == "" then
  sorry("handoff_url and handoff_token must be set")
  return
end

local caller = session:getVariable("caller_id_number")
local status, answer = handoff("POST", "/v1/interactions", {
  channel = "voice",
  target = { queue = queue },
  -- The SIP Call-ID of the caller's leg matches the interaction to SIP traces.
  call_id = session:getVariable("sip_call_id") or session:get_uuid(),
  caller = caller,
  dialed = session:getVariable("destination_number"),
  context = context,
}, 5, "freeswitch-" .. session:get_uuid())
if (status ~= 201 and status ~= 200) or type(answer) ~= "table" then
  sorry("POST /v1/interactions answered " .. status)
  return
end
interaction = answer

-- The offer whose agent's phone just failed to answer (by its deadline, which a new offer
-- does not share, even to the same agent): it ends when the desktop rejects it or it times
-- out, and handoff then offers the call anew.
local failed_offer = nil

while session:ready() do
  local agent = interaction.agent
  local agent_id = type(agent) == "table" and agent.id or nil
  local stale = interaction.state == "offered" and interaction.offer_expires_at == failed_offer
  if interaction.state == "queued" or stale then
    interaction = hold_while(function(now)
      return now.state == "queued"
        or (now.state == "offered" and now.offer_expires_at == failed_offer)
    end)
    if not interaction then
      sorry("handoff could not be asked while the caller waited")
      break
    end
  elseif interaction.state == "offered" then
    local address = type(agent) == "table" and agent.address or nil
    if type(address) ~= "string" or not address:match("^sips?:") then
      sorry("agent " .. tostring(agent_id) .. " has no SIP address")
      break
    end
    -- The B leg's INVITE carries the interaction id. hangup_after_bridge: once the agent
    -- and the caller have talked, the call is over.
    session:setVariable("hangup_after_bridge", "true")
    session:setVariable("continue_on_fail", "true")
    session:execute("bridge",
      "{sip_h_X-Handoff-Interaction=" .. interaction.id .. ",call_timeout=20}" .. gateway .. address)
    if not session:ready() then
      break
    end
    -- Still here: the agent's phone did not answer (busy, no answer, unreachable).
    log("INFO", "agent " .. agent_id .. " did not answer: "
      .. tostring(session:getVariable("originate_disposition")))
    failed_offer = interaction.offer_expires_at
  else
    -- timed_out, unanswered, abandoned: nobody will take it.
    sorry("interaction " .. interaction.id .. " is " .. tostring(interaction.state))
    break
  end
end

report_hangup()
