// Words of the console in English and Chinese. The language is the user's choice (kept in this
// browser), else the browser's own language. Unknown event types fall back to their own words.
"use strict";

const I18N = (() => {
  const en = {
    title: "Duty console", user: "User", password: "Password", login: "Log in", logout: "Log out",
    bad_login: "Wrong user or password.", throttled: "Too many failed logins: wait a few minutes.",
    unreachable: "The gateway does not answer.",
    tab_alarms: "Alarms", tab_site: "Site", tab_events: "Event log", tab_device: "Device",
    times_in: "Times in {tz}", live: "live", reconnecting: "reconnecting…",
    no_alarms: "No active alarms.", active_for: "active for", raised: "raised",
    cleared_after: "cleared at {t}, after {d}",
    st_active_unacked: "unacknowledged", st_active_acked: "acknowledged",
    st_cleared_unacked: "cleared, unacknowledged", st_closed: "closed",
    shelved_until: "shelved until {t}", latched: "latched (reset needed)",
    acked_by: "acknowledged by {u}", escalated: "escalated",
    ack: "Acknowledge", shelve: "Shelve", unshelve: "Unshelve", reset: "Reset", comment: "Comment",
    shelve_hours: "Shelve for (hours)", no_lifecycle: "This gateway runs no alarm lifecycle: acknowledgement is unavailable.",
    actions: "Linked actions", snapshot: "camera snapshot", confirm: "Confirm", cancel: "Cancel", send: "Send",
    confirm_command: "Send “{c}” to {d}?", confirm_op: "{op} alarm “{a}”?",
    cmd_accepted: "accepted", cmd_sent: "sent", cmd_succeeded: "succeeded", cmd_failed: "failed",
    cmd_expired: "expired", cmd_rejected: "rejected",
    sev_critical: "critical", sev_major: "major", sev_minor: "minor", sev_info: "info",
    online: "online", offline: "OFFLINE", unknown: "no report yet", disabled: "disabled",
    devices: "devices", offline_count: "{n} offline", all_online: "all online",
    building: "Building {b}", garage: "Garage {g}", elsewhere: "Elsewhere",
    unit: "unit {u}", floor: "floor {f}", zone: "{z}",
    since: "since", recent_events: "Recent events", chart: "History", field: "Value",
    no_numeric: "No numeric history for this device in this period.",
    filter_kind: "Kind", filter_device: "Device", filter_type: "Type", filter_severity: "Severity",
    filter_since: "From", filter_until: "To", any: "any", apply: "Apply", export_csv: "Export CSV",
    col_time: "Time", col_device: "Device", col_type: "Event", col_severity: "Severity", col_state: "State",
    col_detail: "Detail", rows: "{n} events", commands: "Commands", last_hour: "last hour",
    last_day: "last 24 h", from_influx: "from InfluxDB", from_local: "from the local history", viewer_only: "Your role can only look.",
    // device state words
    floor_n: "floor {f}", dir_up: "going up", dir_down: "going down", dir_stopped: "stopped",
    dir_none: "idle", doors: "doors {s}", door_open: "open", door_closed: "closed", door_opening: "opening",
    door_closing: "closing", door_unknown: "unknown", mode: "mode: {m}", occupied: "occupied",
    zone_state: "zone {s}", source: "source: {s}", fault: "fault: {f}", plate: "last plate {p}",
    decision_open: "opened", decision_deny: "denied", barrier: "barrier {s}", detection: "last detection: {d}",
    gate_open: "door open", gate_closed: "door closed", locked: "locked", unlocked: "unlocked",
    tamper: "tamper", on_battery: "on battery", battery: "battery {n}%",
    // commands
    c_hold_door: "Hold lift doors", c_release_door: "Release doors", c_call: "Call to floor",
    c_return_to_floor: "Recall to floor", c_release_return: "End recall", c_open: "Open gate",
    c_hold_open: "Hold gate open", c_lock: "Lock gate", c_release: "Release gate",
    c_emergency_start: "Start emergency broadcast", c_emergency_stop: "Stop emergency broadcast",
    c_play: "Play message", c_set_volume: "Set volume", c_raise_barrier: "Raise barrier",
    c_open_barrier: "Raise barrier", c_close_barrier: "Lower barrier", c_lower_barrier: "Lower barrier",
    c_relay: "Switch camera output", a_output: "output", a_state: "state (on/off)",
    a_seconds: "seconds", a_floor: "floor", a_door: "door", a_zones: "zones (comma-separated, empty: all)",
    a_clip: "clip", a_message: "message", a_zone: "zone", a_db: "dB", a_priority: "priority",
    // event types
    "t.device.offline": "device offline", "t.device.online": "device back online",
    "t.elevator.passenger_trapped": "passenger trapped in lift", "t.elevator.alarm_button": "lift alarm button pressed", "t.elevator.overspeed": "lift overspeed",
    "t.elevator.door_open_while_running": "lift door open while running",
    "t.elevator.stopped_outside_door_zone": "lift stopped between floors", "t.elevator.mode_changed": "lift mode changed",
    "t.elevator.fault.unknown": "lift fault", "t.camera.fire_detected": "fire seen by camera",
    "t.camera.smoke_detected": "smoke seen by camera", "t.camera.ebike_detected": "e-bike detected",
    "t.camera.intrusion": "intrusion", "t.camera.tamper": "camera tampered", "t.camera.video_loss": "camera video lost",
    "t.camera.motion": "motion", "t.access.denied": "access denied", "t.access.granted": "access granted",
    "t.access.forced_open": "gate forced open", "t.access.held_open": "gate held open", "t.access.tamper": "gate tampered",
    "t.pa.line_fault": "PA speaker line fault", "t.pa.amp_fault": "PA amplifier fault", "t.pa.mains_fault": "PA mains power lost",
    "t.pa.battery_low": "PA battery low", "t.pa.backup_power_fault": "PA backup power fault",
    "t.pa.emergency_broadcast": "emergency broadcast", "t.pa.spare_amp_switched": "PA spare amplifier took over",
    "t.lpr.plate_read": "plate read", "t.lpr.gate_decision": "barrier decision", "t.lpr.barrier_stuck": "barrier stuck",
    "t.lpr.barrier_command_failed": "barrier command failed", "t.door.forced_open": "door forced open",
    "t.door.held_open": "door held open", "t.gate.tailgating": "tailgating at the gate",
    "t.lpr.blocklisted": "blocklisted plate", "t.pa.source": "PA source changed", "t.pa.zone_state": "PA zone changed",
    k_elevator: "lift", k_access_gate: "gate", k_pa: "PA", k_plate_reader: "plate reader", k_camera: "camera",
  };
  const zh = {
    title: "值班控制台", user: "用户", password: "密码", login: "登录", logout: "退出",
    bad_login: "用户名或密码错误。", throttled: "登录失败次数过多，请稍候再试。", unreachable: "网关无响应。",
    tab_alarms: "报警", tab_site: "现场", tab_events: "事件记录", tab_device: "设备",
    times_in: "时间为 {tz} 时区", live: "实时", reconnecting: "正在重连…",
    no_alarms: "当前没有报警。", active_for: "已持续", raised: "发生于", cleared_after: "{t} 已恢复，持续 {d}",
    st_active_unacked: "未确认", st_active_acked: "已确认", st_cleared_unacked: "已恢复，未确认", st_closed: "已关闭",
    shelved_until: "已搁置至 {t}", escalated: "已升级", latched: "已锁存（需复位）", acked_by: "{u} 已确认",
    ack: "确认", shelve: "搁置", unshelve: "取消搁置", reset: "复位", comment: "备注",
    shelve_hours: "搁置时长（小时）", no_lifecycle: "本网关未启用报警生命周期，无法确认。",
    actions: "联动动作", snapshot: "抓拍图片", confirm: "确定", cancel: "取消", send: "发送",
    confirm_command: "向 {d} 发送“{c}”？", confirm_op: "{op}报警“{a}”？",
    cmd_accepted: "已受理", cmd_sent: "已发送", cmd_succeeded: "成功", cmd_failed: "失败",
    cmd_expired: "已过期", cmd_rejected: "被拒绝",
    sev_critical: "紧急", sev_major: "重要", sev_minor: "次要", sev_info: "提示",
    online: "在线", offline: "离线", unknown: "尚无上报", disabled: "已停用",
    devices: "台设备", offline_count: "{n} 台离线", all_online: "全部在线",
    building: "{b} 号楼", garage: "{g} 车库", elsewhere: "其他",
    unit: "{u} 单元", floor: "{f} 层", zone: "{z}",
    since: "自", recent_events: "最近事件", chart: "历史曲线", field: "数值",
    no_numeric: "该时段内此设备没有数值历史。",
    filter_kind: "类别", filter_device: "设备", filter_type: "类型", filter_severity: "级别",
    filter_since: "起", filter_until: "止", any: "全部", apply: "查询", export_csv: "导出 CSV",
    col_time: "时间", col_device: "设备", col_type: "事件", col_severity: "级别", col_state: "状态",
    col_detail: "详情", rows: "{n} 条事件", commands: "操作", last_hour: "最近一小时",
    last_day: "最近 24 小时", from_influx: "来自 InfluxDB", from_local: "来自本地历史", viewer_only: "您的角色只能查看。",
    floor_n: "{f} 层", dir_up: "上行", dir_down: "下行", dir_stopped: "停止", dir_none: "空闲",
    doors: "门{s}", door_open: "开", door_closed: "关", door_opening: "正在开", door_closing: "正在关",
    door_unknown: "状态未知", mode: "模式：{m}", occupied: "有人", zone_state: "分区{s}", source: "音源：{s}",
    fault: "故障：{f}", plate: "最近车牌 {p}", decision_open: "放行", decision_deny: "拒绝", barrier: "道闸{s}",
    detection: "最近检测：{d}", gate_open: "门开", gate_closed: "门关", locked: "已锁", unlocked: "未锁",
    tamper: "被撬", on_battery: "电池供电", battery: "电量 {n}%",
    c_hold_door: "保持电梯开门", c_release_door: "释放电梯门", c_call: "召梯至楼层", c_return_to_floor: "迫降至楼层",
    c_release_return: "解除迫降", c_open: "开门", c_hold_open: "保持门常开", c_lock: "锁门", c_release: "解除门控",
    c_emergency_start: "启动紧急广播", c_emergency_stop: "停止紧急广播", c_play: "播放提示音", c_set_volume: "设置音量",
    c_raise_barrier: "抬杆", c_open_barrier: "抬杆", c_close_barrier: "落杆", c_lower_barrier: "落杆",
    c_relay: "切换摄像机输出", a_output: "输出口", a_state: "状态（on/off）",
    a_seconds: "秒", a_floor: "楼层", a_door: "门号", a_zones: "分区（逗号分隔，空为全部）", a_clip: "音频",
    a_message: "内容", a_zone: "分区", a_db: "分贝", a_priority: "优先级",
    "t.device.offline": "设备离线", "t.device.online": "设备恢复在线", "t.elevator.passenger_trapped": "电梯困人", "t.elevator.alarm_button": "电梯警铃按下",
    "t.elevator.overspeed": "电梯超速", "t.elevator.door_open_while_running": "电梯开门走车",
    "t.elevator.stopped_outside_door_zone": "电梯非平层停梯", "t.elevator.mode_changed": "电梯模式变化",
    "t.elevator.fault.unknown": "电梯故障", "t.camera.fire_detected": "摄像机发现火情",
    "t.camera.smoke_detected": "摄像机发现烟雾", "t.camera.ebike_detected": "发现电动车", "t.camera.intrusion": "区域入侵",
    "t.camera.tamper": "摄像机被遮挡", "t.camera.video_loss": "视频丢失", "t.camera.motion": "移动侦测",
    "t.access.denied": "门禁拒绝", "t.access.granted": "门禁通行", "t.access.forced_open": "门被强行打开",
    "t.access.held_open": "门长时间未关", "t.access.tamper": "门禁被撬", "t.pa.line_fault": "广播线路故障",
    "t.pa.amp_fault": "广播功放故障", "t.pa.mains_fault": "广播主电断电", "t.pa.battery_low": "广播电池电量低",
    "t.pa.backup_power_fault": "广播备电故障", "t.pa.emergency_broadcast": "紧急广播", "t.pa.spare_amp_switched": "备用功放已切换",
    "t.lpr.plate_read": "车牌识别", "t.lpr.gate_decision": "道闸决策", "t.lpr.barrier_stuck": "道闸卡滞",
    "t.lpr.barrier_command_failed": "道闸指令失败", "t.door.forced_open": "门被强行打开", "t.door.held_open": "门长时间未关",
    "t.gate.tailgating": "尾随进入", "t.lpr.blocklisted": "黑名单车牌", "t.pa.source": "广播音源变化",
    "t.pa.zone_state": "广播分区状态变化",
    k_elevator: "电梯", k_access_gate: "门禁", k_pa: "广播", k_plate_reader: "车牌识别", k_camera: "摄像机",
  };
  const dicts = {en, zh};
  let lang = localStorage.getItem("courtyard.lang") ||
    ((navigator.languages || [navigator.language || "en"]).some((l) => l.toLowerCase().startsWith("zh")) ? "zh" : "en");
  if (!dicts[lang]) lang = "en";

  function t(key, vars) {
    let s = dicts[lang][key] ?? en[key] ?? key;
    for (const [k, v] of Object.entries(vars || {})) s = s.replaceAll(`{${k}}`, String(v));
    return s;
  }
  // "elevator.passenger_trapped" -> its words, else the type's own words ("passenger trapped").
  function typeWords(type) {
    const key = `t.${type}`;
    if (dicts[lang][key] || en[key]) return t(key);
    return type.split(".").slice(1).join(" ").replaceAll("_", " ");
  }
  function commandWords(name) {
    const key = `c_${name}`;
    return dicts[lang][key] || en[key] ? t(key) : name.replaceAll("_", " ");
  }
  function apply(root) {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    for (const el of root.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  }
  function setLang(l) { lang = dicts[l] ? l : "en"; localStorage.setItem("courtyard.lang", lang); }
  return {t, typeWords, commandWords, apply, setLang, get lang() { return lang; }};
})();
